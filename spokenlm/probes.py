"""Stage probes: what each encoder layer knows, after Pasad et al. (2021), "Layer-wise analysis of a
self-supervised speech representation model".

Pasad et al. follow wav2vec 2.0's information layer by layer: how close each layer stays to the
local (CNN) input features, and how well simple probes read phones and words off it — which showed
that pre-trained wav2vec 2.0 is autoencoder-like (the last layers drift back towards the input while
phonetic content peaks in the middle). We compute two such curves for any ``SpeechEncoder`` whose
output carries ``hidden_states`` (L, B, T, D):

- **linear-probe accuracy** of frame-level character labels, per hidden state: a multinomial
  logistic regression fitted on the frames of training utterances and scored on held-out
  *utterances* (the split is by utterance, never by frame: neighbouring frames are near-duplicates
  and would leak), next to the majority-class baseline;
- **cosine similarity to the input features**, per hidden state: the cosine between a frame's
  state at layer l and at index 0, averaged over all valid frames. Index 0 is the Transformer's input
  (for wav2vec 2.0: conv features after the projection and positional conv), not the raw 512-dim
  conv output Pasad et al. compare against — every hidden state has the same dim D, so a plain cosine
  is defined; row 0 is 1.0 by construction.

Frame labels come from CTC forced alignment (``torchaudio.functional.forced_align``, blank = 0) of
the transcript against a CTC log-prob source, e.g. a trained CTC compressor head
(``ctc_log_prob_source``): each frame gets the character the best CTC path puts there, or blank,
the "silence / between characters" class. Precomputed alignments can be given instead.

The probe is sklearn's ``LogisticRegression`` (lbfgs) on standardised features, not a torch layer
trained for a few epochs: the problem is convex, so the solver reaches the same optimum for every
layer without a learning rate or epoch count to tune, and differences between layers measure the
representation rather than the optimiser. ``LayerProbe.converged`` says whether lbfgs stopped
within ``max_iter``. sklearn and matplotlib are imported only where used.

Not here: the stage-wise SLUE report that consumes these numbers; CCA or mutual-information probes.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from spokenlm.compress.vocab import BLANK, CharVocab
from spokenlm.encoders.base import EncoderOutput

CTCSource = Callable[[Tensor], Tensor]  # wav (S,) 16 kHz -> (T', V) CTC log-probs over T' frames

CLASSIFIER = "sklearn LogisticRegression (lbfgs, multinomial, L2) on standardised features"


# ----------------------------------------------------------------------------------------------
# Config and report


@dataclass(frozen=True, kw_only=True)
class ProbeConfig:
    """How to split, subsample and fit the per-layer probes."""

    test_fraction: float = 0.25
    """Share of utterances held out for scoring (rounded; at least one held out and one kept)."""

    seed: int = 0
    """Seeds the utterance split and the training-frame subsample."""

    max_train_frames: int | None = 50_000
    """Fit each probe on at most this many training frames (the same random subset for every
    layer); None = all. Scoring always uses every held-out frame."""

    inverse_regularization: float = 1.0
    """LogisticRegression's ``C``: inverse L2 strength, on standardised features."""

    max_iter: int = 500
    """lbfgs iteration cap per layer."""

    def validate(self) -> None:
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"ProbeConfig.test_fraction must be in (0, 1), got {self.test_fraction!r}")
        if not _is_int(self.seed) or self.seed < 0:
            raise ValueError(f"ProbeConfig.seed must be an int >= 0, got {self.seed!r}")
        if self.max_train_frames is not None and (not _is_int(self.max_train_frames) or self.max_train_frames < 2):
            raise ValueError(f"ProbeConfig.max_train_frames must be None or an int >= 2, got {self.max_train_frames!r}")
        if not self.inverse_regularization > 0:
            raise ValueError(
                f"ProbeConfig.inverse_regularization must be positive, got {self.inverse_regularization!r}"
            )
        if not _is_int(self.max_iter) or self.max_iter < 1:
            raise ValueError(f"ProbeConfig.max_iter must be an int >= 1, got {self.max_iter!r}")


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


@dataclass(frozen=True)
class LayerProbe:
    """The probe results of one hidden state."""

    index: int  # into hidden_states: 0 = Transformer input, i = output of layer i
    accuracy: float  # linear-probe frame accuracy on held-out utterances
    cosine: float  # mean cosine(h_l[t], h_0[t]) over all valid frames of all utterances
    n_train_frames: int  # frames the probe was fitted on (after subsampling)
    n_test_frames: int  # held-out frames it was scored on
    converged: bool  # lbfgs stopped before max_iter


@dataclass(frozen=True)
class ProbeReport:
    """Per-layer probe accuracy and input similarity; ``to_markdown`` / ``plot`` render it."""

    layers: tuple[LayerProbe, ...]  # one per hidden state, in order
    majority_accuracy: float  # held-out accuracy of always predicting the commonest training label
    majority_label: int  # that label (0 = blank)
    num_classes: int  # distinct labels among the training frames
    train_utterances: tuple[int, ...]  # indices into the probed utterances
    test_utterances: tuple[int, ...]
    classifier: str = CLASSIFIER

    def to_markdown(self) -> str:
        """A Markdown table, one row per hidden state, then the majority-class baseline."""
        lines = [
            "| layer | probe accuracy | cosine to layer 0 | train frames | test frames |",
            "|---:|---:|---:|---:|---:|",
        ]
        for p in self.layers:
            note = "" if p.converged else " (not converged)"
            lines.append(
                f"| {p.index} | {p.accuracy:.3f}{note} | {p.cosine:.3f} | {p.n_train_frames} | {p.n_test_frames} |"
            )
        lines += [
            "",
            f"Majority-class baseline: {self.majority_accuracy:.3f} (label {self.majority_label}); "
            f"{self.num_classes} classes; {len(self.train_utterances)} train / "
            f"{len(self.test_utterances)} held-out utterances; probe: {self.classifier}.",
        ]
        return "\n".join(lines) + "\n"

    def plot(self, path: str | Path) -> Path:
        """Write a PNG: probe accuracy (with the majority baseline) and cosine to layer 0, vs layer."""
        # Figure + Agg canvas directly: no pyplot, so no global backend or figure registry is touched
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        path = Path(path)
        index = [p.index for p in self.layers]
        fig = Figure(figsize=(9, 3.5), layout="constrained")
        FigureCanvasAgg(fig)
        acc_ax, cos_ax = fig.subplots(1, 2)
        acc_ax.plot(index, [p.accuracy for p in self.layers], marker="o", label="linear probe")
        acc_ax.axhline(self.majority_accuracy, linestyle="--", color="grey", label="majority class")
        acc_ax.set(xlabel="layer", ylabel="held-out frame accuracy", title="Character probe", ylim=(0, 1.02))
        acc_ax.legend(loc="lower right")
        cos_ax.plot(index, [p.cosine for p in self.layers], marker="o", color="tab:orange")
        cos_ax.set(xlabel="layer", ylabel="mean cosine", title="Similarity to layer 0 (input)")
        for ax in (acc_ax, cos_ax):
            ax.set_xticks(index)
            ax.grid(alpha=0.3)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png", dpi=100)
        return path


# ----------------------------------------------------------------------------------------------
# Frame labels


def forced_align_labels(log_probs: Tensor, targets: Sequence[int] | Tensor, *, blank: int = BLANK) -> Tensor:
    """The label of every frame on the most likely CTC path that spells ``targets``.

    log_probs: (T, V) CTC log-probabilities (``log_softmax`` is re-applied, so logits work too);
    targets: the transcript's ids, none of them ``blank``. Returns (T,) int64: a target id or
    ``blank`` per frame (a repeated character gets a blank between its runs, as CTC demands).
    """
    import torchaudio.functional as AF

    if not isinstance(log_probs, Tensor) or log_probs.ndim != 2 or not log_probs.is_floating_point():
        shape = tuple(log_probs.shape) if isinstance(log_probs, Tensor) else type(log_probs).__name__
        raise ValueError(f"log_probs must be (T, V) float, got {shape}")
    num_frames, vocab_size = log_probs.shape
    ids = [int(i) for i in (targets.tolist() if isinstance(targets, Tensor) else targets)]
    if not ids:
        raise ValueError("targets must not be empty")
    bad = [i for i in ids if not 0 <= i < vocab_size or i == blank]
    if bad:
        raise ValueError(f"targets must be ids in [0, {vocab_size}) other than blank={blank}, got {bad}")
    repeats = sum(a == b for a, b in zip(ids, ids[1:]))
    if len(ids) + repeats > num_frames:
        raise ValueError(
            f"CTC alignment needs at least {len(ids) + repeats} frames ({len(ids)} targets, {repeats} "
            f"adjacent repeats) but log_probs has {num_frames}"
        )
    lp = log_probs.detach().to("cpu", torch.float32).log_softmax(dim=-1)[None]  # (1, T, V)
    with warnings.catch_warnings():
        # torchaudio 2.8+ flags forced_align as deprecated; it is still the reference implementation
        warnings.simplefilter("ignore", UserWarning)
        path, _ = AF.forced_align(lp, torch.tensor([ids], dtype=torch.int32), blank=blank)
    return path[0].long()  # (T,)


def map_frames(labels: Tensor, num_frames: int) -> Tensor:
    """Re-time (T_src,) frame labels to ``num_frames`` frames spanning the same audio: frame t takes
    the label of the source frame under its centre, floor((t + 0.5) * T_src / num_frames)."""
    if not isinstance(labels, Tensor) or labels.ndim != 1 or labels.shape[0] == 0:
        shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"labels must be a non-empty (T,) tensor, got {shape}")
    if labels.shape[0] == num_frames:
        return labels.long()
    source = torch.div((2 * torch.arange(num_frames) + 1) * labels.shape[0], 2 * num_frames, rounding_mode="floor")
    return labels.long()[source.clamp(max=labels.shape[0] - 1)]


def ctc_log_prob_source(encoder: nn.Module, compressor: nn.Module) -> CTCSource:
    """A ``CTCSource`` from an encoder and a trained CTC compressor (anything with
    ``ctc_log_probs(EncoderOutput) -> (B, T, V)``): wav (S,) -> (T, V) over its valid frames."""

    def source(wav: Tensor) -> Tensor:
        device = _device(encoder)
        with torch.inference_mode():
            encoded = encoder(wav[None].to(device), torch.tensor([wav.shape[0]], device=device))
            return compressor.ctc_log_probs(encoded)[0, : int(encoded.lengths[0])]

    return source


# ----------------------------------------------------------------------------------------------
# Probing


def probe_layers(
    encoder: nn.Module,
    utterances: Sequence[tuple[Tensor, str]],
    *,
    ctc: CTCSource | None = None,
    alignments: Sequence[Tensor] | None = None,
    vocab: CharVocab | None = None,
    config: ProbeConfig | None = None,
) -> ProbeReport:
    """Probe every hidden state of ``encoder`` on ``utterances``, a list of (wav (S,) 16 kHz, transcript).

    Frame labels: exactly one of
    - ``ctc``: wav -> (T', V) CTC log-probs; the transcript (``vocab.encode``, default ``CharVocab()``,
      blank = 0) is force-aligned against them, then re-timed to the encoder's frames if T' differs;
    - ``alignments``: one (T',) label tensor per utterance (e.g. from a forced aligner), re-timed the
      same way; transcripts are then unused.
    Each utterance is encoded on its own (no padding, so group-norm encoders are exact too), in eval
    mode and without gradient; the encoder's training flag is restored afterwards.
    """
    config = config or ProbeConfig()
    config.validate()
    if (ctc is None) == (alignments is None):
        raise ValueError("give exactly one frame-label source: ctc or alignments")
    if alignments is not None and len(alignments) != len(utterances):
        raise ValueError(f"got {len(alignments)} alignments for {len(utterances)} utterances")
    vocab = vocab or CharVocab()

    hidden, labels = [], []
    was_training = encoder.training
    encoder.eval()
    try:
        for i, (wav, text) in enumerate(utterances):
            states = _encode(encoder, wav, i)  # (L, T, D)
            if ctc is not None:
                ids = vocab.encode(text)
                if not ids:
                    raise ValueError(f"utterance {i} has no characters in the CTC alphabet: {text!r}")
                with torch.inference_mode():
                    log_probs = ctc(wav)
                try:
                    frame_labels = forced_align_labels(log_probs, ids)
                except ValueError as err:
                    raise ValueError(f"utterance {i}: {err}") from err
            else:
                frame_labels = alignments[i]
            hidden.append(states)
            labels.append(map_frames(torch.as_tensor(frame_labels).detach().cpu(), states.shape[1]))
    finally:
        encoder.train(was_training)
    return probe_features(hidden, labels, config=config)


def probe_features(
    hidden_states: Sequence[Tensor], labels: Sequence[Tensor], *, config: ProbeConfig | None = None
) -> ProbeReport:
    """The probes on precomputed states: ``hidden_states[i]`` (L, T_i, D) and ``labels[i]`` (T_i,)
    for utterance i. Utterances are split into train / held-out by ``config`` (seeded)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    config = config or ProbeConfig()
    config.validate()
    n = len(hidden_states)
    if n != len(labels):
        raise ValueError(f"got {len(labels)} label sequences for {n} utterances")
    if n < 2:
        raise ValueError(f"probes need at least 2 utterances (one to fit, one held out), got {n}")
    shapes = set()
    for i, (h, y) in enumerate(zip(hidden_states, labels)):
        if h.ndim != 3 or y.ndim != 1 or h.shape[1] != y.shape[0]:
            raise ValueError(
                f"utterance {i}: hidden states must be (L, T, D) with (T,) labels, "
                f"got {tuple(h.shape)} and {tuple(y.shape)}"
            )
        shapes.add((h.shape[0], h.shape[2]))
    if len(shapes) > 1:
        raise ValueError(f"utterances disagree on (layers, dim): {sorted(shapes)}")

    g = torch.Generator().manual_seed(config.seed)
    order = torch.randperm(n, generator=g).tolist()
    n_test = min(n - 1, max(1, round(config.test_fraction * n)))
    test_ids, train_ids = sorted(order[:n_test]), sorted(order[n_test:])

    def stack(ids: list[int]) -> tuple[Tensor, Tensor]:
        x = torch.cat([hidden_states[i].detach().to("cpu", torch.float32) for i in ids], dim=1)  # (L, N, D)
        y = torch.cat([labels[i].long().cpu() for i in ids])  # (N,)
        return x, y

    x_train, y_train = stack(train_ids)
    x_test, y_test = stack(test_ids)
    if y_test.numel() == 0:
        raise ValueError("the held-out utterances have no frames")
    # cosine to the input (index 0), averaged over every valid frame of every utterance
    cosine_sum = sum(torch.nn.functional.cosine_similarity(x, x[:1], dim=-1).sum(dim=1) for x in (x_train, x_test))
    cosines = cosine_sum / (y_train.numel() + y_test.numel())  # (L,)
    classes, counts = torch.unique(y_train, return_counts=True)
    if len(classes) < 2:
        raise ValueError(f"training frames carry a single label ({classes.tolist()}); probes need at least two")
    majority = int(classes[counts.argmax()])
    majority_accuracy = float((y_test == majority).float().mean())

    if config.max_train_frames is not None and y_train.numel() > config.max_train_frames:
        keep = torch.randperm(y_train.numel(), generator=g)[: config.max_train_frames]
        x_train, y_train = x_train[:, keep], y_train[keep]

    layers = []
    for layer in range(x_train.shape[0]):
        probe = make_pipeline(
            StandardScaler(),
            LogisticRegression(C=config.inverse_regularization, max_iter=config.max_iter),
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # reported as LayerProbe.converged
            probe.fit(x_train[layer].numpy(), y_train.numpy())
        accuracy = float((probe.predict(x_test[layer].numpy()) == y_test.numpy()).mean())
        layers.append(
            LayerProbe(
                index=layer,
                accuracy=accuracy,
                cosine=float(cosines[layer]),
                n_train_frames=int(y_train.numel()),
                n_test_frames=int(y_test.numel()),
                converged=bool(probe[-1].n_iter_.max() < config.max_iter),
            )
        )
    return ProbeReport(
        layers=tuple(layers),
        majority_accuracy=majority_accuracy,
        majority_label=majority,
        num_classes=len(classes),
        train_utterances=tuple(train_ids),
        test_utterances=tuple(test_ids),
    )


def _encode(encoder: nn.Module, wav: Tensor, i: int) -> Tensor:
    """One utterance through the encoder -> (L, T, D) float32 CPU hidden states of its valid frames."""
    if not isinstance(wav, Tensor) or wav.ndim != 1 or not wav.is_floating_point():
        shape = tuple(wav.shape) if isinstance(wav, Tensor) else type(wav).__name__
        raise ValueError(f"utterance {i}: wav must be a 1-D float (S,) tensor, got {shape}")
    device = _device(encoder)
    with torch.inference_mode():
        out = encoder(wav[None].to(device), torch.tensor([wav.shape[0]], device=device))
    if not isinstance(out, EncoderOutput) or out.hidden_states is None:
        raise ValueError("the encoder returned no hidden_states; layer probes need every layer")
    num_frames = int(out.lengths[0])
    return out.hidden_states[:, 0, :num_frames].detach().to("cpu", torch.float32)


def _device(module: nn.Module) -> torch.device:
    param = next(module.parameters(), None)
    return torch.device("cpu") if param is None else param.device
