"""Recipe `ctc`: a character CTC head on a speech encoder, trained with it on transcripts. Gives the
CTC compressor of Speech-LLaMA (Wu et al., 2023, §2.2) and the fine-tuned encoder it reads.

    spokenlm train ctc --config configs/ctc.yaml            # from the DinoSR-pretrained encoder
    spokenlm train ctc --config configs/ctc_scratch.yaml    # the no-pretraining ablation

1. Read the manifest's utterances that have the "asr" task. Every stream of the corpus speaks exactly
   its `task_labels["text"]` (the normalized transcript; other tasks' targets live under other keys),
   so all of them are transcribed speech. Drop items whose text has no CTC character, or needs more
   frames than the encoder makes of the clip (characters + adjacent repeats).
2. The encoder: a saved one (`encoder_dir`, e.g. the DinoSR student of `encoder-ssl`) or a preset at
   random init (`encoder_preset`); a fresh CTC head (`CTCCompressor`) on top.
3. CTC on duration-bucketed batches: the head alone for `freeze_encoder_steps`, then both, the encoder
   at `encoder_lr_ratio` of the learning rate (warmed up again when it unfreezes, so a pretrained
   encoder does not take full-size Adam steps from a head that is still poor). SpecAugment-style time
   and channel masks on the frames entering the encoder's Transformer (`frame_masking`).
4. Every `eval_every` steps on the held-out split: CTC loss, greedy CER and WER (jiwer, against the
   vocabulary-normalized reference), and tokens per second after blank removal / frame averaging.
   Checkpoint; a rerun resumes from the latest checkpoint, wall time included.
5. Write OUT/encoder/ and OUT/compressor/ (the two directories a bundle takes), metrics.json, loss.png.
"""

from __future__ import annotations

import dataclasses
import functools
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

import torch
from torch import Tensor, nn

from spokenlm.audio import SAMPLE_RATE
from spokenlm.compress import CTCCompressor, CTCCompressorConfig, CharVocab, save_compressor
from spokenlm.encoders import load_encoder, save_encoder, with_config, with_overrides
from spokenlm.encoders.base import EncoderOutput
from spokenlm.train.data import AudioCache, Utterance, duration_batches, id_hash_order, read_manifest, total_hours
from spokenlm.train.features import FeatureCache
from spokenlm.train.loop import (
    Checkpointer,
    barrier,
    MetricsLog,
    OptimConfig,
    WallClock,
    clip_and_step,
    finished_summary,
    is_main,
    lr_now,
    mean_across_workers,
    rank,
    world_size,
    wrap_ddp,
)

CTC_MODES = ("blank_removal", "frame_averaging")
LOG_EVERY = 10  # steps between training-loss rows in metrics.jsonl (the mean over those steps)


def encoder_presets() -> dict[str, Callable[[], Any]]:
    """Preset name -> the function that returns its encoder config."""
    from spokenlm.encoders.dinosr import dinosr_base, dinosr_tiny, dinosr_tiny_conformer
    from spokenlm.encoders.sylber import sylber_base, sylber_tiny
    from spokenlm.encoders.wav2vec2 import wav2vec2_base, wav2vec2_tiny

    presets = (dinosr_tiny, dinosr_tiny_conformer, dinosr_base, wav2vec2_tiny, wav2vec2_base, sylber_tiny, sylber_base)
    return {f.__name__: f for f in presets}


@dataclass(frozen=True, kw_only=True)
class CTCTrainConfig:
    out_dir: str
    manifest: str | tuple[str, ...]  # the corpus manifest.jsonl (`spokenlm data synth`), or several

    repeat: dict[str, int] = field(default_factory=dict)
    """Manifest path -> how many times its training utterances enter each epoch (default 1): a small
    real corpus (the FSDD digits, ~14 min beside 20 h) is otherwise ~1 % of the steps. Dev is never
    repeated."""

    init_from: str | None = None
    """A compressor directory (an earlier run's OUT/compressor, e.g. models/parts/ctc/compressor)
    whose weights this run starts from instead of a fresh head; its shape (layers, heads, input
    width, mode) must be this config's. Checkpoints of this run still take precedence on resume."""

    encoder_dir: str | None = None
    """A saved encoder (`save_encoder`), e.g. runs/encoder-ssl/encoder, or any checkpoint directory
    `load_encoder` reads (a CTranslate2 or HF Whisper dir, an HF Wav2Vec2 dir). Exactly one of this,
    encoder_preset and encoder_base."""

    encoder_preset: str | None = None
    """A preset function name (`encoder_presets()`: "dinosr_tiny", "wav2vec2_tiny", ...), randomly
    initialised: training from scratch."""

    encoder_base: str | None = None
    """A pretrained base pinned in spokenlm/bases.py (`KNOWN_BASES`: "whisper-tiny.en"), resolved
    from the installed package or the cache (`spokenlm bases fetch`)."""

    freeze_encoder: bool = False
    """The encoder never trains: its features are computed once per utterance and cached under
    `feature_cache` (spokenlm/train/features.py), and SpecAugment masks act on those features in
    front of the compressor's context layers. OUT/encoder/ is then not written: the bundle
    references the encoder it was given."""

    feature_cache: str | None = None
    """Root of the feature cache (default <cache>/features; shared with the speechlm recipe)."""

    compressor_layers: int = 0
    """Transformer layers of the CTC compressor in front of its head (CTCCompressorConfig.num_layers);
    with a frozen encoder these are what CTC trains."""

    compressor_heads: int = 4
    compressor_dropout: float = 0.1

    encoder_overrides: dict = field(default_factory=dict)
    """Config fields replaced (dataclasses.replace) on the preset, or on the saved encoder's config
    (only fields that keep its weights' shapes: dropout, layer_drop, ...)."""

    mode: Literal["blank_removal", "frame_averaging"] = "frame_averaging"
    """What the compressor hands the LLM: one token per non-blank frame, or one per character."""

    train_splits: tuple[str, ...] = ("fine-tune",)
    dev_split: str = "dev"  # evaluated every eval_every steps
    max_duration_s: float = 20.0  # longer clips are left out (attention cost grows with T²)
    max_batch_s: float = 80.0  # padded audio seconds per batch per worker

    freeze_encoder_steps: int = 0
    """Train the head alone (encoder forward without gradient) for this many steps first."""

    encoder_lr_ratio: float = 1.0
    """The encoder's learning rate as a fraction of the head's (optim.lr and its schedule)."""

    mask_time_prob: float = 0.3
    """SpecAugment time masking: the share of each item's frames its spans cover before overlap
    (`compute_span_mask`; 0.3 masks ~26 %); 0 = off."""

    mask_time_length: int = 10  # frames per time span (200 ms at 50 Hz)
    mask_channel_prob: float = 0.1  # likewise over the model_dim channels of every frame; 0 = off
    mask_channel_length: int = 16  # channels per span

    bf16: bool = False  # bfloat16 autocast for the forward pass (CTC loss stays float32)
    eval_every: int = 250
    eval_max_utts: int = 300  # a fixed subset of the dev split (by id hash), to bound eval time
    num_examples: int = 5  # (reference, hypothesis) pairs kept in metrics.json
    seed: int = 0
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, warmup_steps=200, max_steps=3000))

    def validate(self) -> None:
        sources = [name for name in ("encoder_dir", "encoder_preset", "encoder_base") if getattr(self, name) is not None]
        if len(sources) != 1:
            got = " and ".join(sources) if sources else "none"
            raise ValueError(f"ctc needs exactly one of encoder_dir, encoder_preset and encoder_base, got {got}")
        if self.encoder_base is not None:
            from spokenlm.bases import KNOWN_BASES

            if self.encoder_base not in KNOWN_BASES:
                raise ValueError(f"unknown encoder_base {self.encoder_base!r}; expected one of {', '.join(KNOWN_BASES)}")
        if self.freeze_encoder and self.freeze_encoder_steps:
            raise ValueError("freeze_encoder already keeps the encoder frozen; set freeze_encoder_steps to 0")
        if self.compressor_layers < 0 or self.compressor_heads < 1:
            raise ValueError(
                f"compressor_layers must be >= 0 and compressor_heads >= 1, got {self.compressor_layers}, "
                f"{self.compressor_heads}"
            )
        if not 0.0 <= self.compressor_dropout < 1.0:
            raise ValueError(f"compressor_dropout must be in [0, 1), got {self.compressor_dropout}")
        if self.encoder_preset is not None:
            presets = encoder_presets()
            if self.encoder_preset not in presets:
                raise ValueError(
                    f"unknown encoder_preset {self.encoder_preset!r}; expected one of {', '.join(presets)}"
                )
            with_overrides(presets[self.encoder_preset](), self.encoder_overrides).validate()
        if self.mode not in CTC_MODES:
            raise ValueError(f"mode must be 'blank_removal' or 'frame_averaging', got {self.mode!r}")
        if not self.train_splits:
            raise ValueError("train_splits must name at least one split")
        if not (self.max_duration_s > 0 and self.max_batch_s > 0):
            raise ValueError(
                f"max_duration_s and max_batch_s must be > 0, got {self.max_duration_s}, {self.max_batch_s}"
            )
        if self.freeze_encoder_steps < 0:
            raise ValueError(f"freeze_encoder_steps must be >= 0, got {self.freeze_encoder_steps}")
        if not self.encoder_lr_ratio > 0:
            raise ValueError(f"encoder_lr_ratio must be > 0, got {self.encoder_lr_ratio}")
        for name in ("mask_time_prob", "mask_channel_prob"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        manifests = (self.manifest,) if isinstance(self.manifest, str) else tuple(self.manifest)
        for path, times in self.repeat.items():
            if path not in manifests:
                raise ValueError(f"repeat names {path!r}, which is not one of the manifests {list(manifests)}")
            if not (isinstance(times, int) and not isinstance(times, bool) and times >= 1):
                raise ValueError(f"repeat[{path!r}] must be an integer >= 1, got {times!r}")
        for name in ("mask_time_length", "mask_channel_length", "eval_every", "eval_max_utts"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        self.optim.validate()


def build_start_encoder(config: CTCTrainConfig) -> nn.Module:
    """The encoder training starts from: loaded from encoder_dir, or the preset at random init."""
    from spokenlm.encoders import build_encoder

    if config.encoder_preset is not None:
        return build_encoder(with_overrides(encoder_presets()[config.encoder_preset](), config.encoder_overrides))
    from spokenlm.bases import base_or_dir

    source = base_or_dir(config.encoder_base, config.encoder_dir)
    return with_config(load_encoder(source), config.encoder_overrides, source=source)


# --- data ----------------------------------------------------------------------------------------


def usable_utterances(utts: list[Utterance], encoder: nn.Module, vocab: CharVocab) -> tuple[list[Utterance], int]:
    """(utterances CTC can learn from, how many were dropped): a non-empty normalized text whose
    characters plus adjacent repeats fit in the frames the encoder makes of the clip."""
    # 10 ms less than the manifest says: a decoded clip can be a sample shorter than its duration_s
    samples = torch.tensor([max(0, round((u.duration_s - 0.01) * SAMPLE_RATE)) for u in utts], dtype=torch.long)
    frames = encoder.output_lengths(samples).tolist() if utts else []
    keep = []
    for utt, n in zip(utts, frames):
        if "text" not in utt.labels:
            raise ValueError(f"utterance {utt.id} has the asr task but no task_labels['text']")
        ids = vocab.encode(utt.labels["text"])
        if ids and len(ids) + sum(a == b for a, b in zip(ids, ids[1:])) <= n:
            keep.append(utt)
    return keep, len(utts) - len(keep)


# --- SpecAugment on the frames entering the Transformer ------------------------------------------
#
# Where to mask: on the frames the encoder's frontend hands to its Transformer (after the feature
# projection), where wav2vec 2.0 fine-tuning (fairseq's apply_mask: mask_prob, mask_channel_prob) and
# DinoSR pre-training mask. One forward hook on that projection, registered for a single training
# forward pass, serves waveform and fbank frontends of every encoder kind; evaluation, inference and
# the saved encoder never see it. Masking `EncoderOutput.features` instead would only hide frames
# from a per-frame linear head, which nothing could fill back in; masking log-mels would not reach
# the waveform frontends. Masked values are zero (fairseq uses a learned embedding for time masks; a
# zero frame keeps the encoder's parameters as they are and still differs from speech after the
# positional convolution and layer norm).

_FRAME_PROJECTIONS = {  # encoder class -> submodule whose output is the (B, T, D) Transformer input
    "DinoSREncoder": "post_extract_proj",
    "SylberEncoder": "proj",
    "Wav2Vec2Encoder": "backbone.model.feature_projection",  # transformers' (frames, normed) tuple
}


def frame_projection(encoder: nn.Module) -> nn.Module:
    """The submodule of `encoder` whose output is its Transformer's input frames, or a ValueError."""
    name = _FRAME_PROJECTIONS.get(type(encoder).__name__)
    if name is not None:
        try:
            return encoder.get_submodule(name)
        except AttributeError:
            pass  # e.g. wav2vec 2.0 on the fairseq2 backend, which runs its frontend's parts by hand
    raise ValueError(
        f"frame masking does not know where the Transformer input of a {type(encoder).__name__} is "
        f"(backend {getattr(encoder.config, 'backend', '-')}); set mask_time_prob and mask_channel_prob to 0"
    )


def mask_frames(x: Tensor, lengths: Tensor, config: CTCTrainConfig, generator: torch.Generator) -> Tensor:
    """x: (B, T, D) frames with (B,) valid lengths -> x with time spans and channel spans zeroed."""
    from spokenlm.encoders.dinosr import compute_span_mask

    batch, frames, dim = x.shape
    keep = torch.ones(batch, frames, dim, dtype=torch.bool, device=x.device)
    if config.mask_time_prob > 0:
        spans = compute_span_mask(
            lengths.cpu(), mask_prob=config.mask_time_prob, span_length=config.mask_time_length, generator=generator
        )  # (B, max(lengths))
        keep[:, : spans.shape[1]] &= ~spans[:, :frames, None].to(x.device)
    if config.mask_channel_prob > 0:
        channels = compute_span_mask(
            torch.full((batch,), dim), mask_prob=config.mask_channel_prob,
            span_length=min(config.mask_channel_length, dim), generator=generator,
        )  # (B, D)  # fmt: skip
        keep &= ~channels[:, None, :].to(x.device)
    return x * keep.to(x.dtype)


@contextmanager
def frame_masking(
    encoder: nn.Module, wav_lengths: Tensor, config: CTCTrainConfig, generator: torch.Generator
) -> Iterator[None]:
    """Within this block, forward passes of `encoder` mask the frames entering its Transformer."""
    if config.mask_time_prob == 0 and config.mask_channel_prob == 0:
        yield
        return
    frame_lengths = encoder.output_lengths(wav_lengths)

    def hook(_module: nn.Module, _inputs: Any, output: Any) -> Any:
        if isinstance(output, tuple):
            return (mask_frames(output[0], frame_lengths, config, generator), *output[1:])
        return mask_frames(output, frame_lengths, config, generator)

    handle = frame_projection(encoder).register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


# --- model and evaluation ------------------------------------------------------------------------


class CTCModel(nn.Module):
    """Encoder + CTC compressor as one module, so DistributedDataParallel sees every parameter."""

    def __init__(self, encoder: nn.Module, compressor: CTCCompressor) -> None:
        super().__init__()
        self.encoder, self.compressor = encoder, compressor

    def forward(self, wav: Tensor, lengths: Tensor, texts: list[str], *, train_encoder: bool = True) -> Tensor:
        """() mean CTC loss of the batch; without train_encoder the encoder runs without gradient."""
        with nullcontext() if train_encoder else torch.no_grad():
            encoded = self.encoder(wav, lengths)
        return self.compressor.ctc_loss(encoded, texts)


class CompressorCTC(nn.Module):
    """The CTC compressor alone over precomputed (cached) encoder features, as one module for DDP."""

    def __init__(self, compressor: CTCCompressor) -> None:
        super().__init__()
        self.compressor = compressor

    def forward(self, encoded: EncoderOutput, texts: list[str]) -> Tensor:
        return self.compressor.ctc_loss(encoded, texts)


@dataclass(frozen=True)
class EvalTotals:
    """Sums over one worker's share of the dev utterances (add across workers, then divide)."""

    utterances: int
    loss: float  # sum of per-utterance CTC losses
    char_errors: int  # substitutions + deletions + insertions, over characters (spaces included)
    ref_chars: int
    word_errors: int
    ref_words: int
    tokens_per_second: dict[str, float]  # mode -> sum over utterances of tokens per second in that mode
    examples: list[dict] = field(default_factory=list)  # {"id", "ref", "hyp"}, in utterance order


@torch.no_grad()
def evaluate(
    encoder: nn.Module,
    compressor: CTCCompressor,
    utts: list[Utterance],
    cache: AudioCache,
    *,
    max_batch_s: float,
    bf16: bool = False,
    num_examples: int = 0,
    features: FeatureCache | None = None,
) -> EvalTotals:
    """Greedy CTC decoding of `utts` against their vocabulary-normalized transcripts, in eval mode;
    tokens per second in both modes (the same head), for the compression table. With `features`
    the encoder's output is read from that cache instead of computed."""
    import jiwer

    was_training = encoder.training
    encoder.eval()
    compressor.eval()
    mode = compressor.config.mode
    twins = {m: CTCCompressor(dataclasses.replace(compressor.config, mode=m)) for m in CTC_MODES if m != mode}
    for twin in twins.values():
        twin.head, twin.context = compressor.head, compressor.context  # shared, not copied
    hyps: dict[str, str] = {}
    loss = 0.0
    tokens_per_second = dict.fromkeys(CTC_MODES, 0.0)
    for idx in duration_batches(utts, max_batch_s=max_batch_s, seed=0, shuffle=False):
        batch_utts = [utts[i] for i in idx]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            if features is not None:
                encoded = features.batch(batch_utts)
            else:
                audio = cache.batch(batch_utts)
                encoded = encoder(audio.wav, audio.lengths)
            out = compressor(encoded)
            loss += float(compressor.ctc_loss(encoded, [u.labels["text"] for u in batch_utts])) * len(idx)
            outs = {mode: out, **{m: twin(encoded) for m, twin in twins.items()}}
        for m, compressed in outs.items():
            tokens_per_second[m] += float(compressed.tokens_per_second.sum())
        texts = compressor.greedy_transcripts(out.ctc_log_probs, encoded.lengths)
        hyps.update((u.id, text) for u, text in zip(batch_utts, texts))
    encoder.train(was_training)
    compressor.train(was_training)
    if not utts:  # a worker's share of a dev set smaller than the worker count
        return EvalTotals(
            utterances=0, loss=0.0, char_errors=0, ref_chars=0, word_errors=0, ref_words=0,
            tokens_per_second=tokens_per_second,
        )  # fmt: skip
    refs = [compressor.vocab.normalize(u.labels["text"]) for u in utts]
    hyp_list = [compressor.vocab.normalize(hyps[u.id]) for u in utts]  # greedy output may start with " "
    chars, words = jiwer.process_characters(refs, hyp_list), jiwer.process_words(refs, hyp_list)
    return EvalTotals(
        utterances=len(utts),
        loss=loss,
        char_errors=chars.substitutions + chars.deletions + chars.insertions,
        ref_chars=chars.substitutions + chars.deletions + chars.hits,
        word_errors=words.substitutions + words.deletions + words.insertions,
        ref_words=words.substitutions + words.deletions + words.hits,
        tokens_per_second=tokens_per_second,
        examples=[{"id": u.id, "ref": r, "hyp": h} for u, r, h in list(zip(utts, refs, hyp_list))[:num_examples]],
    )


def reduce_totals(totals: EvalTotals, mode: str) -> dict[str, float]:
    """Dev metrics over every worker's share: loss per utterance, CER, WER, mean tokens per second
    (`mode`'s, and each mode's)."""

    def total(value: float) -> float:
        return mean_across_workers(float(value)) * world_size()

    n = max(total(totals.utterances), 1.0)
    tps = {m: total(v) / n for m, v in totals.tokens_per_second.items()}
    return {
        "val_loss": total(totals.loss) / n,
        "val_cer": total(totals.char_errors) / max(total(totals.ref_chars), 1.0),
        "val_wer": total(totals.word_errors) / max(total(totals.ref_words), 1.0),
        "val_tokens_per_second": tps[mode],
        **{f"val_tokens_per_second_{m}": v for m, v in tps.items()},
    }


def _cache_progress(out: Path) -> Callable[[int, int], None]:
    log = out / "feature_cache.log"

    def report(done: int, total: int) -> None:
        if is_main():
            with log.open("a") as f:
                f.write(f"{done}/{total}\n")

    return report


def repeated(utts: list[Utterance], config: CTCTrainConfig) -> list[Utterance]:
    """`utts` with those of each manifest in `config.repeat` entered that many times."""
    if not config.repeat:
        return utts
    times_of = {}
    for path, times in config.repeat.items():
        ids = {u.id for u in read_manifest(path, splits=config.train_splits, tasks=("asr",))}
        times_of.update(dict.fromkeys(ids, times))
    return [u for u in utts for _ in range(times_of.get(u.id, 1))]


def start_from(compressor: CTCCompressor, directory: str) -> None:
    """Load the weights of the compressor saved in `directory` into `compressor` (same shape)."""
    from spokenlm.compress import load_compressor

    theirs = load_compressor(directory)
    mine_config, their_config = compressor.config, theirs.config
    for key in ("input_dim", "num_layers", "num_heads", "mode"):
        if getattr(mine_config, key) != getattr(their_config, key):
            raise ValueError(
                f"init_from {directory}: its {key} is {getattr(their_config, key)!r}, this run's is "
                f"{getattr(mine_config, key)!r}"
            )
    compressor.load_state_dict(theirs.state_dict(), strict=True)


# --- the recipe ----------------------------------------------------------------------------------


def train(config: CTCTrainConfig) -> dict:
    config.validate()
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if (finished := finished_summary(out, config.optim.max_steps)) is not None:
        return finished  # rewriting the compressor would make the chain rerun ctc-lm after it
    torch.manual_seed(config.seed)
    encoder = build_start_encoder(config)
    compressor_config = CTCCompressorConfig(
        input_dim=encoder.output_dim, mode=config.mode, num_layers=config.compressor_layers,
        num_heads=config.compressor_heads, dropout=config.compressor_dropout,
    )  # fmt: skip
    compressor = CTCCompressor(compressor_config)
    if config.init_from:
        start_from(compressor, config.init_from)
    if config.freeze_encoder:
        encoder.requires_grad_(False)
    elif config.mask_time_prob > 0 or config.mask_channel_prob > 0:
        frame_projection(encoder)  # fail now, not at the first step

    def split(splits: tuple[str, ...]) -> tuple[list[Utterance], int]:
        utts = read_manifest(config.manifest, splits=splits, tasks=("asr",), max_duration_s=config.max_duration_s)
        return usable_utterances(utts, encoder, compressor.vocab)

    train_utts, skipped = split(config.train_splits)
    unique_train_utts = len(train_utts)
    train_utts = repeated(train_utts, config)
    dev_utts, _ = split((config.dev_split,))
    dev_utts = id_hash_order(dev_utts)[: config.eval_max_utts]
    if not train_utts:
        raise ValueError(f"{config.manifest}: no usable asr utterances in splits {list(config.train_splits)}")
    if not dev_utts:
        raise ValueError(f"{config.manifest}: no usable asr utterances in dev_split {config.dev_split!r}")
    # The same buckets every epoch (only their order changes): step -> (epoch, batch) is a pure function,
    # so a resumed run continues the data order exactly. Each worker takes every world_size-th batch.
    num_batches = len(duration_batches(train_utts, max_batch_s=config.max_batch_s, seed=0, shuffle=False))
    per_worker = num_batches // world_size()
    if per_worker < 1:
        raise ValueError(f"{num_batches} training batches cannot feed {world_size()} workers; lower max_batch_s")

    @functools.lru_cache(maxsize=1)
    def epoch_batches(epoch: int) -> list[list[int]]:
        return duration_batches(train_utts, max_batch_s=config.max_batch_s, seed=config.seed * 100_003 + epoch)

    def batch_at(step: int) -> list[Utterance]:
        epoch, i = divmod(step, per_worker)
        return [train_utts[j] for j in epoch_batches(epoch)[i * world_size() + rank()]]

    features = None
    if config.freeze_encoder:  # encode once; the encoder takes no further part in training
        from spokenlm.bases import cache_dir

        features = FeatureCache(config.feature_cache or cache_dir() / "features", encoder)
        features.build(train_utts + dev_utts, AudioCache(), progress=_cache_progress(out), part=(rank(), world_size()))
        barrier()  # every worker's shards are on disk
        features.load(train_utts + dev_utts)
    model = wrap_ddp(CompressorCTC(compressor) if config.freeze_encoder else CTCModel(encoder, compressor))
    o = config.optim
    groups = [{"params": list(compressor.parameters())}]  # head (+ context layers), then the encoder
    if not config.freeze_encoder:
        groups.append({"params": list(encoder.parameters())})
    optimizer = torch.optim.AdamW(groups, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
    checkpoints, metrics = Checkpointer(out), MetricsLog(out)
    modules = {"compressor": compressor} if config.freeze_encoder else {"encoder": encoder, "compressor": compressor}
    state = checkpoints.restore(modules, optimizer) or {"step": 0, "wall_s": 0.0, "audio_s": 0.0}
    step, clock, audio_s = state["step"], WallClock(state["wall_s"]), state["audio_s"]
    cache = AudioCache()
    my_dev = dev_utts[rank() :: world_size()]

    def learning_rates(step: int, elapsed_s: float) -> tuple[float, float]:
        """(head, encoder) learning rates at `step`, `elapsed_s` into the run."""
        lr = lr_now(step, elapsed_s, o)
        if step < config.freeze_encoder_steps:
            return lr, 0.0
        rewarm = min(1.0, (step - config.freeze_encoder_steps + 1) / max(1, o.warmup_steps))
        return lr, lr * config.encoder_lr_ratio * (rewarm if config.freeze_encoder_steps else 1.0)

    def run_eval() -> tuple[dict[str, float], list[dict]]:
        totals = evaluate(
            encoder, compressor, my_dev, cache, max_batch_s=config.max_batch_s, bf16=config.bf16,
            num_examples=config.num_examples, features=features,
        )  # fmt: skip
        return reduce_totals(totals, config.mode), totals.examples

    def save() -> None:
        if is_main():
            checkpoints.save(step, modules, optimizer, {"wall_s": clock.seconds, "audio_s": audio_s})

    last_eval_step, (scores, examples) = -1, ({}, [])
    if step == 0:  # the untrained head's dev scores: what the curves are read against
        scores, examples = run_eval()
        last_eval_step = 0
        if is_main():
            metrics.log(0, **scores)
    encoder.train()
    compressor.train()
    window: list[float] = []
    while step < o.max_steps:
        elapsed_s = mean_across_workers(clock.seconds)  # one value everywhere: workers stop together, share lr
        if o.max_minutes > 0 and elapsed_s >= o.max_minutes * 60:
            break
        utts = batch_at(step)
        texts = [u.labels["text"] for u in utts]
        head_lr, encoder_lr = learning_rates(step, elapsed_s)
        for group, lr in zip(optimizer.param_groups, (head_lr, encoder_lr)):
            group["lr"] = lr
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + step * 1009 + rank())
        if features is not None:
            encoded = features.batch(utts)
            # SpecAugment on the cached features: the compressor's context layers must fill the gaps
            encoded = dataclasses.replace(encoded, features=mask_frames(encoded.features, encoded.lengths, config, generator))
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16):
                loss = model(encoded, texts)
            batch_s = float(encoded.lengths.sum()) / encoder.frame_rate_hz
            frozen = True
        else:
            audio = cache.batch(utts)
            frozen = step < config.freeze_encoder_steps
            with frame_masking(encoder, audio.lengths, config, generator):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16):
                    # DDP needs a gradient for every parameter, so there a frozen encoder's is computed and dropped
                    loss = model(audio.wav, audio.lengths, texts, train_encoder=not frozen or world_size() > 1)
            batch_s = float(audio.lengths.sum()) / SAMPLE_RATE
        loss.backward()
        if frozen and not config.freeze_encoder:
            for p in encoder.parameters():
                p.grad = None  # AdamW skips parameters without a gradient: no update, no moment drift
        grad_norm = clip_and_step(optimizer, model.parameters(), o)
        step += 1
        audio_s += batch_s * world_size()
        window.append(loss.item())
        if step % LOG_EVERY == 0:
            if is_main():
                metrics.log(step, loss=sum(window) / len(window), lr=head_lr, encoder_lr=encoder_lr, grad_norm=grad_norm)
            window = []
        if step % config.eval_every == 0:
            scores, examples = run_eval()
            last_eval_step = step
            if is_main():
                metrics.log(step, **scores)
            save()
    save()
    if last_eval_step != step:
        scores, examples = run_eval()
        if is_main():
            metrics.log(step, **scores)

    summary: dict[str, Any] = {
        "stage": "ctc",
        "encoder": config.encoder_dir or config.encoder_preset or f"base:{config.encoder_base}",
        "encoder_frozen": config.freeze_encoder,
        "encoder_kind": type(encoder).__name__,
        "encoder_parameters": sum(p.numel() for p in encoder.parameters()),
        "mode": config.mode,
        "frame_rate_hz": encoder.frame_rate_hz,
        "steps": step,
        "epochs": round(step / per_worker, 2),
        "wall_minutes": round(clock.seconds / 60, 2),
        "workers": world_size(),
        "train_utterances": unique_train_utts,
        "train_utterances_repeated": len(train_utts),
        "train_hours": round(total_hours(list({u.id: u for u in train_utts}.values())), 3),
        "skipped_train_utterances": skipped,
        "audio_hours_seen": round(audio_s / 3600, 3),
        "audio_hours_per_minute": round(audio_s / 3600 / max(clock.seconds / 60, 1e-9), 3),
        "dev_split": config.dev_split,
        "dev_utterances": len(dev_utts),
        "dev_hours": round(total_hours(dev_utts), 3),
    }
    start = next((r for r in metrics.rows() if "val_cer" in r), None) if is_main() else None
    if start is not None:  # the step-0 row; absent on other workers, or if metrics.jsonl was removed
        summary.update({f"dev_{k[4:]}_start": round(start[k], 4) for k in ("val_loss", "val_cer", "val_wer")})
    summary.update({f"dev_{k[4:]}": round(v, 4) for k, v in scores.items()})
    summary["examples"] = [{"ref": e["ref"], "hyp": e["hyp"]} for e in examples]
    if is_main():
        if not config.freeze_encoder:  # a frozen encoder is referenced where it came from, not copied
            save_encoder(encoder, out / "encoder")
        save_compressor(compressor, out / "compressor")
        metrics.write_summary(summary)
        metrics.plot(title=f"ctc ({summary['encoder']})")
    return summary
