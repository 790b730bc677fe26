"""bench/ssl_learning.py: boundary matching and word boundaries by hand, the frame-shift convention
for both frontends, and a smoke run of the whole report on tiny random encoders and example clips."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_ssl_learning", REPO / "bench" / "ssl_learning.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


bench = _load_bench()

# CharVocab(): a..z are ids 1..26, space 27, blank 0
A, B, C, D, SPACE = 1, 2, 3, 4, 27


def test_match_boundaries_counts_each_side_within_the_tolerance():
    reference = [0.0, 0.5, 1.0]
    hypothesis = [0.04, 0.56, 0.95, 2.0]
    score = bench.match_boundaries(reference, hypothesis)
    # 0.0 <- 0.04 (40 ms); 0.5: nearest 0.56 is 60 ms away; 1.0 <- 0.95 (exactly 50 ms counts)
    assert (score.reference, score.reference_hit) == (3, 2)
    # 0.04 and 0.95 are near a word boundary; 0.56 and 2.0 are not
    assert (score.hypothesis, score.hypothesis_hit) == (4, 2)
    assert score.recall == pytest.approx(2 / 3)
    assert score.precision == pytest.approx(1 / 2)
    assert score.f1 == pytest.approx(2 * (2 / 3) * (1 / 2) / (2 / 3 + 1 / 2))
    # many-to-one: one hypothesis boundary can serve two reference boundaries
    assert bench.match_boundaries([0.30, 0.38], [0.34]).reference_hit == 2
    total = score + bench.match_boundaries([0.30, 0.38], [0.34])
    assert (total.reference, total.reference_hit, total.hypothesis, total.hypothesis_hit) == (5, 4, 5, 3)


def test_dedup_merges_points_within_20ms_of_their_group_start():
    assert bench.dedup([0.10, 0.0, 0.02, 0.5]) == pytest.approx([0.01, 0.10, 0.5])
    # a chain 15 ms apart: anchored on the group's first point, so it does not collapse into one
    assert bench.dedup([0.0, 0.015, 0.030, 0.045]) == pytest.approx([0.0075, 0.0375])


def test_word_spans_from_a_hand_made_alignment_path():
    # "ab cd": a on frames 1-2, b on 4, space on 5-6, c on 8, d on 10-11
    path = [0, A, A, 0, B, SPACE, SPACE, 0, C, 0, D, D, 0]
    assert bench.char_runs(path) == [(A, 1, 3), (B, 4, 5), (SPACE, 5, 7), (C, 8, 9), (D, 10, 12)]
    assert bench.word_spans(path, space_id=SPACE) == [(1, 5), (8, 12)]
    # a doubled letter is two characters of one word: "aa"; a one-frame space between words
    assert bench.word_spans([A, 0, A, SPACE, B], space_id=SPACE) == [(0, 3), (4, 5)]
    # to seconds at 50 Hz: starts and ends, ends of one word and the next start 20 ms apart merge
    boundaries = bench.span_boundaries([(0, 3), (4, 6)], frame_rate_hz=50.0, shift_s=0.0325)
    assert boundaries == pytest.approx([0.0325, 0.07 + 0.0325, 0.12 + 0.0325])


def test_frame_shift_is_the_receptive_field_centre_minus_the_nominal_one():
    from spokenlm.encoders import build_encoder
    from spokenlm.encoders.base import frame_shift_s
    from spokenlm.encoders.dinosr import dinosr_tiny
    from spokenlm.encoders.sylber import sylber_tiny

    # DinoSR fbank: frame 0 sees samples [0, 1360), centre 42.5 ms; nominal centre 10 ms at 50 Hz
    assert frame_shift_s(build_encoder(tiny_dinosr())) == pytest.approx(0.0325)
    assert dinosr_tiny().receptive_field == 1360
    # Sylber fbank: a 400-sample first frame, centre 12.5 ms
    assert frame_shift_s(build_encoder(sylber_tiny())) == pytest.approx(0.0025)


def tiny_dinosr():
    from spokenlm.encoders.dinosr import dinosr_tiny

    return replace(dinosr_tiny(), fbank_channels=8, model_dim=32, num_layers=2, num_heads=2, ffn_dim=64,
                   pos_conv_depth=1, pos_conv_groups=4, num_codebooks=2, codebook_size=8)  # fmt: skip


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory, example_clips):
    """A manifest of the example clips (3 kept, 3 left out) and tiny random encoder directories."""
    import torch

    from spokenlm.compress import CTCCompressorConfig, build_compressor, save_compressor
    from spokenlm.encoders import build_encoder, save_encoder
    from spokenlm.encoders.sylber import sylber_tiny

    root = tmp_path_factory.mktemp("ssl_learning")
    texts = dict(line.split("\t") for line in (REPO / "examples" / "manifest.tsv").read_text().splitlines()[1:])
    for clip in example_clips:
        shutil.copy(clip, root / clip.name)
    first, second = (c.name for c in example_clips[:2])
    rows = [  # (id, split, file, engine, text)
        ("a", "dev", first, "piper", texts[first]),
        ("b", "test", second, "piper", texts[second]),
        ("c", "dev", second, "piper", texts[second]),
        ("d", "fine-tune", first, "piper", texts[first]),  # not held out
        ("e", "dev", first, "espeak", texts[first]),  # another engine
        ("f", "dev", first, "piper", "a " * 200),  # more characters than CTC frames: cannot align
    ]
    with (root / "manifest.jsonl").open("w") as f:
        for id_, split, name, engine, text in rows:
            row = {"id": id_, "split": split, "audio": name, "duration_s": 3.0, "voice": {"engine": engine},
                   "task_labels": {"text": text.strip()}, "tasks": ["asr"]}  # fmt: skip
            f.write(json.dumps(row) + "\n")

    torch.manual_seed(1)
    save_encoder(build_encoder(tiny_dinosr()), root / "ssl" / "encoder")
    save_encoder(build_encoder(tiny_dinosr()), root / "ctc" / "encoder")
    save_compressor(build_compressor(CTCCompressorConfig(input_dim=32)), root / "ctc" / "compressor")
    sylber = build_encoder(sylber_tiny())
    save_encoder(sylber, root / "sylber" / "encoder")
    thresholds = {"norm_threshold": 0.0, "merge_threshold": 0.8}
    sylber_json = {"encoder": "encoder", **thresholds, "compressor": {"input_dim": sylber.output_dim, **thresholds}}
    (root / "sylber" / "sylber.json").write_text(json.dumps(sylber_json))
    # an unfinished DinoSR run: metrics.jsonl only
    rows = [{"step": 0, "val_loss": 2.0, "val_ppl_0": 5.0, "val_ppl_1": 6.0}, {"step": 10, "loss": 1.9},
            {"step": 20, "val_loss": 1.5, "val_ppl_0": 7.0, "val_ppl_1": 3.0}]  # fmt: skip
    (root / "ssl" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.mark.slow
def test_main_prints_the_report_and_its_last_line(tiny_runs, capsys):
    root = tiny_runs
    result = bench.main([
        "--manifest", str(root / "manifest.jsonl"), "--splits", "dev", "test", "--engine", "piper",
        "--pretrained", str(root / "ssl" / "encoder"), "--ctc", str(root / "ctc"), "--sylber", str(root / "sylber"),
        "--ssl-run", str(root / "ssl"), "--out", str(root / "report"), "--probe-max-iter", "50",
    ])  # fmt: skip
    lines = capsys.readouterr().out.strip().splitlines()
    assert sum(line.startswith("left out: f: CTC alignment needs") for line in lines) == 1
    assert lines[-1].startswith("bench ssl-learning: ")
    values = dict(item.split("=") for item in lines[-1].removeprefix("bench ssl-learning: ").split())
    assert list(values)[-1] == "ratio"
    assert set(values) == set(result) | {"ratio"}
    for key in ("utterances", "probe_best_pretrained", "probe_best_random", "probe_majority", "segments_per_s",
                "ssl_loss_start", "ssl_loss_end", "ssl_ppl_min"):  # fmt: skip
        assert key in values
    for ref in ("hmm", "ctc"):
        for key in ("utterances", "words_per_s", "recall_50ms", "precision_50ms", "chance_recall_50ms"):
            assert f"{ref}_{key}" in values
        assert 0.0 <= float(values[f"{ref}_recall_50ms"]) <= 1.0
        assert 0.0 <= float(values[f"envelope_{ref}_recall_50ms"]) <= 1.0  # the first-stage segmenter, for reference
    assert 1.0 < float(values["envelope_segments_per_s"]) < 10.0  # syllable-like on real read speech
    assert values["utterances"] == "3"  # fine-tune, espeak and unalignable rows left out
    assert values["hmm_utterances"] == "3" and values["ctc_utterances"] == "3"  # real read speech: all align
    # the clips are ~3 s of real read speech at 2-3 words per second, by either aligner
    assert 1.5 < float(values["hmm_words_per_s"]) < 4.0
    assert float(values["ssl_loss_start"]) == 2.0 and float(values["ssl_loss_end"]) == 1.5
    assert float(values["ssl_ppl_min"]) == 3.0
    ratio = result["probe_best_pretrained"] / result["probe_best_random"]
    assert float(values["ratio"]) == pytest.approx(ratio, abs=1e-3)
    assert (root / "report" / "probe_pretrained.png").is_file()
    assert (root / "report" / "probe_random_init.png").is_file()
    assert json.loads((root / "report" / "ssl_learning.json").read_text())["utterances"] == 3


def test_agreement_leaves_out_clips_without_a_reference():
    seg = bench.Segmentation(boundaries=[[0.1, 0.5, 0.9], [0.2, 0.6]], durations_s=[1.0, 1.0], segments=3,
                             norm_threshold=1.0, merge_threshold=0.8, shift_s=0.0, frame_rate_hz=50.0)  # fmt: skip
    g = bench.agreement("hmm", seg, [[0.12, 0.7], None], [1, 5], seed=0)
    assert (g.clips, g.words, g.seconds) == (1, 1, 1.0)
    assert g.score == bench.BoundaryScore(reference=2, reference_hit=1, hypothesis=3, hypothesis_hit=1)
    assert 0.0 <= g.chance_recall <= 1.0


def test_envelope_segmentation_sits_on_the_sylber_frames():
    from spokenlm.audio import load_audio
    from spokenlm.envelope import envelope_segments

    wav = load_audio(sorted((REPO / "examples").glob("*.wav"))[0])
    clip = bench.Clip("x", wav, "text")
    frames = wav.shape[0] // 320
    like = bench.Segmentation(boundaries=[[]], durations_s=[frames / 50.0], segments=1, norm_threshold=1.0,
                              merge_threshold=0.8, shift_s=0.0325, frame_rate_hz=50.0)  # fmt: skip
    got = bench.envelope_segmentation([clip], like=like)
    spans = envelope_segments(wav, num_frames=frames, frame_rate_hz=50.0, shift_s=0.0325)
    assert got.segments == len(spans) > 0 and got.durations_s == like.durations_s
    assert got.boundaries == [bench.span_boundaries(spans, frame_rate_hz=50.0, shift_s=0.0325)]
