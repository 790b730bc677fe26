"""Stage probes (spokenlm/probes.py): CTC forced-alignment frame labels, per-layer linear probes and
cosine to the input, on a synthetic encoder with known per-layer noise and on the tiny wav2vec2."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from spokenlm.compress.vocab import CharVocab
from spokenlm.encoders.base import EncoderOutput
from spokenlm.probes import (
    LayerProbe,
    ProbeConfig,
    ProbeReport,
    ctc_log_prob_source,
    forced_align_labels,
    map_frames,
    probe_features,
    probe_layers,
)

HOP = 320  # samples per synthetic encoder frame (50 Hz at 16 kHz)
VOCAB = CharVocab()  # a..f are ids 1..6; blank = 0
SIGMAS = (4.0, 2.0, 1.0, 0.5)  # noise of hidden states 0..3: each layer reads the labels more clearly


class NoisyLabelEncoder(nn.Module):
    """A stand-in encoder: sample t * HOP of the wav holds frame t's label id; hidden state l is that
    label's embedding plus Gaussian noise of std SIGMAS[l]."""

    frame_rate_hz = 50.0
    output_dim = 16

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.register_buffer("embedding", torch.randn(VOCAB.size, self.output_dim, generator=g))  # (V, D)
        self.noise = torch.Generator().manual_seed(1)

    def forward(self, wav: Tensor, lengths: Tensor) -> EncoderOutput:
        labels = wav[:, ::HOP].round().long()  # (B, T)
        clean = self.embedding[labels]  # (B, T, D)
        hidden = torch.stack([clean + s * torch.randn(clean.shape, generator=self.noise) for s in SIGMAS])
        return EncoderOutput(
            features=hidden[-1], lengths=lengths // HOP, frame_rate_hz=self.frame_rate_hz, hidden_states=hidden
        )


def ctc_path(text: str, g: torch.Generator) -> Tensor:
    """A random CTC frame path spelling ``text``: blank runs of 0-2 (at least 1 between repeated
    characters), character runs of 1-4, trailing blanks 0-2."""
    ids = VOCAB.encode(text)
    path: list[int] = []
    for k, c in enumerate(ids):
        gap = int(torch.randint(0, 3, (), generator=g))
        if k > 0 and ids[k - 1] == c:
            gap = max(gap, 1)
        path += [0] * gap + [c] * int(torch.randint(1, 5, (), generator=g))
    path += [0] * int(torch.randint(0, 3, (), generator=g))
    return torch.tensor(path)


def synthetic_set(n: int = 16, seed: int = 0) -> tuple[list[tuple[Tensor, str]], list[Tensor]]:
    """n utterances (wav, transcript) of 8-12 letters from a..f, and their true frame labels."""
    g = torch.Generator().manual_seed(seed)
    utterances, paths = [], []
    for _ in range(n):
        letters = torch.randint(0, 6, (int(torch.randint(8, 13, (), generator=g)),), generator=g)
        text = "".join("abcdef"[i] for i in letters.tolist())
        path = ctc_path(text, g)
        utterances.append((path.float().repeat_interleave(HOP), text))
        paths.append(path)
    return utterances, paths


def double_rate_ctc(wav: Tensor) -> Tensor:
    """A confident CTC source at 100 Hz (twice the encoder's rate): (2T, V) log-probs, argmax = label."""
    labels = wav[:: HOP // 2].round().long()
    return (10.0 * nn.functional.one_hot(labels, VOCAB.size).float()).log_softmax(dim=-1)


# ------------------------------------------------------------------------------------ frame labels


def test_forced_alignment_of_a_hand_made_matrix() -> None:
    # V = 4 (blank, 1, 2, 3); per frame: 0.7 on the argmax label, 0.1 elsewhere, except frame 3.
    argmax = [1, 1, 2, 2, 2, 2]
    probs = torch.full((6, 4), 0.1)
    probs[torch.arange(6), torch.tensor(argmax)] = 0.7
    probs[3] = torch.tensor([0.3, 0.1, 0.5, 0.1])
    # targets "1 2 2": the repeated 2 needs a blank between its runs; frame 3 is the cheapest place
    labels = forced_align_labels(probs.log(), [1, 2, 2])
    assert labels.tolist() == [1, 1, 2, 0, 2, 2]
    # when the argmax path already spells the targets, alignment keeps it
    assert forced_align_labels(probs.log(), [1, 2]).tolist() == [1, 1, 2, 2, 2, 2]


def test_forced_alignment_errors() -> None:
    log_probs = torch.zeros(3, 4).log_softmax(-1)
    too_short = r"^CTC alignment needs at least 4 frames \(3 targets, 1 adjacent repeats\) but log_probs has 3$"
    with pytest.raises(ValueError, match=too_short):
        forced_align_labels(log_probs, [1, 2, 2])
    with pytest.raises(ValueError, match=r"^targets must be ids in \[0, 4\) other than blank=0, got \[0, 7\]$"):
        forced_align_labels(log_probs, [0, 7])


def test_map_frames_by_time() -> None:
    assert map_frames(torch.tensor([1, 2, 3]), 6).tolist() == [1, 1, 2, 2, 3, 3]
    assert map_frames(torch.tensor([1, 2, 3, 4, 5, 6]), 3).tolist() == [2, 4, 6]  # the frame under each centre
    assert map_frames(torch.tensor([4, 5]), 2).tolist() == [4, 5]


def test_double_rate_ctc_source_aligns_back_to_the_true_frame_labels() -> None:
    utterances, paths = synthetic_set(n=4)
    for (wav, text), path in zip(utterances, paths):
        labels = forced_align_labels(double_rate_ctc(wav), VOCAB.encode(text))
        assert torch.equal(map_frames(labels, len(path)), path)


# ------------------------------------------------------------------------------------ probes


@pytest.fixture(scope="module")
def synthetic_report() -> ProbeReport:
    utterances, _ = synthetic_set(n=16)
    return probe_layers(NoisyLabelEncoder(), utterances, ctc=double_rate_ctc, config=ProbeConfig(test_fraction=0.25))


def test_probe_accuracy_rises_with_layer_and_beats_majority_on_held_out_utterances(synthetic_report) -> None:
    report = synthetic_report
    accuracy = [p.accuracy for p in report.layers]
    assert [p.index for p in report.layers] == [0, 1, 2, 3]
    assert all(a < b for a, b in zip(accuracy, accuracy[1:])), accuracy
    assert accuracy[-1] > 0.9
    assert all(a > report.majority_accuracy + 0.05 for a in accuracy)
    assert report.majority_label == 0 and report.num_classes == 7  # blank + a..f
    # split by utterance: 4 of 16 held out, disjoint, frame counts add up
    assert len(report.test_utterances) == 4 and len(report.train_utterances) == 12
    assert not set(report.test_utterances) & set(report.train_utterances)
    utterances, paths = synthetic_set(n=16)
    assert report.layers[0].n_test_frames == sum(len(paths[i]) for i in report.test_utterances)
    assert report.layers[0].n_train_frames == sum(len(paths[i]) for i in report.train_utterances)
    assert all(p.converged for p in report.layers)


def test_cosine_to_input_is_one_at_layer_zero_and_follows_the_noise(synthetic_report) -> None:
    cosine = [p.cosine for p in synthetic_report.layers]
    assert cosine[0] == pytest.approx(1.0, abs=1e-5)
    assert all(-1.0 <= c <= 1.0 for c in cosine)
    assert cosine[1] < 0.5  # layer 0 is mostly noise, so later layers are far from it


def test_to_markdown_has_one_row_per_layer(synthetic_report) -> None:
    text = synthetic_report.to_markdown()
    rows = [line for line in text.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(rows) == 4
    assert rows[2].startswith("| 2 | ")
    assert f"Majority-class baseline: {synthetic_report.majority_accuracy:.3f}" in text


def test_plot_writes_a_png(synthetic_report, tmp_path) -> None:
    path = synthetic_report.plot(tmp_path / "plots" / "probes.png")
    data = path.read_bytes()
    assert len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"


def test_precomputed_alignments_give_the_same_report_as_ctc(synthetic_report) -> None:
    utterances, paths = synthetic_set(n=16)
    report = probe_layers(NoisyLabelEncoder(), utterances, alignments=paths, config=ProbeConfig(test_fraction=0.25))
    assert report == synthetic_report


def test_max_train_frames_subsamples_the_training_set() -> None:
    g = torch.Generator().manual_seed(0)
    hidden = [torch.randn(2, 30, 4, generator=g) for _ in range(4)]
    labels = [torch.randint(0, 3, (30,), generator=g) for _ in range(4)]
    report = probe_features(hidden, labels, config=ProbeConfig(test_fraction=0.25, max_train_frames=50))
    assert [(p.n_train_frames, p.n_test_frames) for p in report.layers] == [(50, 30), (50, 30)]
    assert isinstance(report.layers[0], LayerProbe)


def test_probe_errors() -> None:
    utterances, paths = synthetic_set(n=2)
    encoder = NoisyLabelEncoder()
    with pytest.raises(ValueError, match="^give exactly one frame-label source: ctc or alignments$"):
        probe_layers(encoder, utterances)
    with pytest.raises(ValueError, match="^give exactly one frame-label source: ctc or alignments$"):
        probe_layers(encoder, utterances, ctc=double_rate_ctc, alignments=paths)
    with pytest.raises(ValueError, match=r"^probes need at least 2 utterances \(one to fit, one held out\), got 1$"):
        probe_layers(encoder, utterances[:1], alignments=paths[:1])
    with pytest.raises(ValueError, match=r"^utterance 1 has no characters in the CTC alphabet: '\?!'$"):
        probe_layers(encoder, [utterances[0], (utterances[1][0], "?!")], ctc=double_rate_ctc)
    with pytest.raises(ValueError, match=r"^utterance 0: CTC alignment needs at least 101 frames"):
        probe_layers(encoder, [(utterances[0][0], "ab" * 50 + "c"), utterances[1]], ctc=double_rate_ctc)
    with pytest.raises(ValueError, match=r"^ProbeConfig.test_fraction must be in \(0, 1\), got 1.0$"):
        probe_layers(encoder, utterances, alignments=paths, config=ProbeConfig(test_fraction=1.0))


def test_encoder_without_hidden_states_is_refused() -> None:
    class LastLayerOnly(nn.Module):
        def forward(self, wav: Tensor, lengths: Tensor) -> EncoderOutput:
            return EncoderOutput(torch.zeros(1, 3, 2), torch.tensor([3]), 50.0)

    utterances, paths = synthetic_set(n=2)
    with pytest.raises(ValueError, match="^the encoder returned no hidden_states; layer probes need every layer$"):
        probe_layers(LastLayerOnly(), utterances, alignments=paths)


# ------------------------------------------------------------------------------------ real encoder


def test_probes_on_the_tiny_wav2vec2_and_real_clips(example_clips, tmp_path) -> None:
    """Shapes only: an untrained CTC head gives arbitrary (but valid) alignments."""
    import csv

    from spokenlm.audio import load_audio
    from spokenlm.compress.ctc import CTCCompressor, CTCCompressorConfig
    from spokenlm.encoders.wav2vec2 import build_wav2vec2_encoder, wav2vec2_tiny

    manifest = example_clips[0].parent / "manifest.tsv"
    with manifest.open() as f:
        transcripts = {row["file"]: row["transcript"] for row in csv.DictReader(f, delimiter="\t")}
    utterances = [(load_audio(p), transcripts[p.name]) for p in example_clips]

    torch.manual_seed(0)
    encoder = build_wav2vec2_encoder(wav2vec2_tiny())  # training mode: probes must switch to eval and back
    compressor = CTCCompressor(CTCCompressorConfig(input_dim=encoder.output_dim))
    report = probe_layers(encoder, utterances, ctc=ctc_log_prob_source(encoder, compressor))
    assert encoder.training

    frames = [int(encoder.output_lengths(torch.tensor([len(w)]))) for w, _ in utterances]
    assert len(report.layers) == encoder.num_layers + 1 == 3
    (test,) = report.test_utterances
    assert report.layers[0].n_test_frames == frames[test]
    assert report.layers[0].n_train_frames == sum(frames) - frames[test]
    assert report.layers[0].cosine == pytest.approx(1.0, abs=1e-5)
    assert all(0.0 <= p.accuracy <= 1.0 and math.isfinite(p.cosine) for p in report.layers)
    assert report.plot(tmp_path / "w2v2.png").stat().st_size > 0
