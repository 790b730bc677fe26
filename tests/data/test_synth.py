"""Tests for the corpus builder (spokenlm.data.synth, .voices): a real 30-utterance corpus spoken by
piper and espeak-ng, read back with the SLUE readers' conventions (pandas, keep_default_na=False)."""

from __future__ import annotations

import ast
import json
import os
import random
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from spokenlm.audio import SAMPLE_RATE
from spokenlm.data import synth, voices
from spokenlm.data.synth import (
    HVB_COLUMNS,
    VOXCELEB_COLUMNS,
    VOXPOPULI_COLUMNS,
    CorpusError,
    build_corpus,
    plan_corpus,
    synth_main,
    tiny,
)
from spokenlm.data.text import default_data_dir, normalize
from spokenlm.tasks import NER_TAGS, SENTIMENTS, TARGET_LANGUAGES, TASKS

DATA = default_data_dir()
pytestmark = [
    pytest.mark.skipif(not (DATA / "text").is_dir(), reason=f"shared data not found at {DATA}"),
    pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed"),
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, synth.CorpusStats]:
    out = tmp_path_factory.mktemp("corpus")
    return out, build_corpus(tiny(), out)


def _manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text(encoding="utf-8").splitlines()]


def test_builds_every_planned_utterance(corpus):
    out, stats = corpus
    assert stats.utterances == 30 and stats.synthesized == 30 and stats.reused == 0 and not stats.failed
    records = _manifest(out)
    assert [r["id"] for r in records] == [u.id for u in plan_corpus(tiny())]
    assert {r["voice"]["engine"] for r in records} == {"piper", "espeak"}
    assert {r["split"] for r in records} == set(synth.SPLITS)
    saved = json.loads((out / "stats.json").read_text())
    assert saved["utterances"] == 30 and abs(sum(saved["hours_by_split"].values()) - saved["hours"]) < 1e-3
    notes = (out / "LICENSE-NOTES.md").read_text()
    assert "CC BY 2.0 FR" in notes and "manythings.org/anki" in notes and "public domain" in notes


def test_slue_voxpopuli_tsvs(corpus):
    out, _ = corpus
    rows = 0
    for split in synth.SPLITS:
        df = pd.read_csv(out / "slue-voxpopuli" / f"slue-voxpopuli_{split}.tsv", sep="\t", keep_default_na=False)
        assert tuple(df.columns) == VOXPOPULI_COLUMNS
        for row in df.itertuples():
            assert row.split == split and (out / "slue-voxpopuli" / split / f"{row.id}.ogg").is_file()
            assert row.normalized_text == normalize(row.raw_text)
            for text, column in ((row.raw_text, row.raw_ner), (row.normalized_text, row.normalized_ner)):
                entities = ast.literal_eval(column)  # SLUE: a Python literal list, or None
                for tag, start, length in entities or []:
                    assert tag in NER_TAGS and text[start : start + length].strip() == text[start : start + length]
            raw, norm = ast.literal_eval(row.raw_ner) or [], ast.literal_eval(row.normalized_ner) or []
            assert [normalize(row.raw_text[s : s + n]) for _, s, n in raw] == [
                row.normalized_text[s : s + n] for _, s, n in norm
            ]
            rows += 1
    assert rows == sum(1 for r in _manifest(out) if r["stream"] == "ner") > 0


def test_slue_voxceleb_tsvs(corpus):
    out, _ = corpus
    durations = {r["id"]: r["duration_s"] for r in _manifest(out)}
    rows = 0
    for split in synth.SPLITS:
        df = pd.read_csv(out / "slue-voxceleb" / f"slue-voxceleb_{split}.tsv", sep="\t", keep_default_na=False)
        assert tuple(df.columns) == VOXCELEB_COLUMNS
        for row in df.itertuples():
            assert row.sentiment in SENTIMENTS and row.split == split
            assert (out / "slue-voxceleb" / f"{split}_raw" / f"{row.id}.flac").is_file()
            assert row.start_second == 0.0 and abs(row.end_second - durations[row.id]) < 1e-2
            rows += 1
    assert rows > 0


def test_slue_hvb_tsvs(corpus):
    out, _ = corpus
    manifest = {r["id"]: r for r in _manifest(out)}
    rows = 0
    for split in synth.SPLITS:
        df = pd.read_csv(out / "slue-hvb" / f"slue-hvb_{split}.tsv", sep="\t", keep_default_na=False)
        assert tuple(df.columns) == HVB_COLUMNS
        for row in df.itertuples():
            wav = out / "slue-hvb" / split / f"{row.issue_id}_{row.start_ms}_{row.start_ms + row.duration_ms}.wav"
            assert wav.is_file() and manifest[row.issue_id]["audio"] == wav.relative_to(out).as_posix()
            assert ast.literal_eval(row.dialog_acts) == manifest[row.issue_id]["task_labels"]["dialog_acts"]
            rows += 1
    assert rows == sum(1 for r in manifest.values() if r["stream"] == "dialog") > 0


def test_project_slue_readers_read_the_corpus(corpus):
    readers = pytest.importorskip("spokenlm.slue.readers")
    out, _ = corpus
    manifest = {r["id"]: r for r in _manifest(out)}
    for split in synth.SPLITS:
        vox = readers.read_voxpopuli(out, split)
        celeb = readers.read_voxceleb(out, split)
        hvb = readers.read_hvb(out, split)
        for part in (vox, celeb, hvb):
            assert not part.blind and not part.missing_audio and not part.skipped
        for rec in vox:
            labels = manifest[rec.id]["task_labels"]
            assert rec.normalized_text == labels["text"]
            assert rec.entities() == [(t, labels["text"][s : s + n]) for t, s, n in labels["entities"]]
        for rec in celeb:
            assert rec.sentiment == manifest[rec.id]["task_labels"]["sentiment"]
        for rec in hvb:
            assert list(rec.dialog_acts) == manifest[rec.issue_id]["task_labels"]["dialog_acts"]


def test_manifest_labels_feed_every_task_target(corpus):
    out, _ = corpus
    for r in _manifest(out):
        labels = r["task_labels"]
        assert r["tasks"][0] == "asr" and labels["text"] == normalize(labels["raw_text"])
        for tag, start, length in labels["entities"]:
            assert tag in NER_TAGS and 0 <= start and start + length <= len(labels["text"])
        for task in r["tasks"]:
            assert TASKS[task].target(labels).strip(), (task, r["id"])
        if "translate" in r["tasks"]:
            assert labels["target_lang"] in TARGET_LANGUAGES and labels["translation"] in labels["translations"]
        if "qa" in r["tasks"]:
            assert labels["text"][labels["answer_start"] :].startswith(labels["answer"])
            assert labels["question"].endswith("?") and labels["summary"]


def test_audio_is_16k_mono_with_the_manifest_duration(corpus):
    out, _ = corpus
    for r in _manifest(out):
        wav, sr = sf.read(out / r["audio"], dtype="float32")
        assert sr == SAMPLE_RATE and wav.ndim == 1
        assert abs(len(wav) / sr - r["duration_s"]) < 0.01, r["id"]
        assert 0.05 < np.abs(wav).max() <= 1.0 and np.isfinite(wav).all()


def test_no_sentence_text_in_two_splits(corpus):
    out, _ = corpus
    split_of = {}
    for r in _manifest(out):
        assert split_of.setdefault(r["task_labels"]["text"], r["split"]) == r["split"]
    # and on a larger plan (no audio): every stream, ~2 h
    seen = {}
    for u in plan_corpus(tiny(limit=None, hours=2.0)):
        assert seen.setdefault(normalize(u.raw_text), u.split) == u.split


def test_heldout_voice_settings_only_in_test(corpus):
    out, _ = corpus
    cfg = tiny().voices
    records = _manifest(out)
    assert any(r["voice"]["held_out"] for r in records if r["split"] == "test")
    plan = plan_corpus(tiny(limit=None, hours=2.0))
    assert sum(u.voice.held_out for u in plan) > 10
    for u in plan:
        assert voices.is_heldout(u.voice, cfg) == u.voice.held_out
        if u.split != "test":
            assert not u.voice.held_out and u.voice.voice != cfg.heldout_espeak_voice
    train_ls = [u.voice.length_scale for u in plan if u.split == "fine-tune" and u.voice.engine == "piper"]
    lo, hi = cfg.heldout_length_scale
    assert train_ls and not any(lo <= x < hi for x in train_ls)
    assert min(train_ls) < lo and max(train_ls) >= hi  # both sides of the band are trained


def test_plan_is_deterministic_and_prefix_stable(corpus):
    out, _ = corpus
    a, b = plan_corpus(tiny()), plan_corpus(tiny())
    assert a == b
    assert [u.task_labels() for u in a] == [r["task_labels"] for r in _manifest(out)]
    assert [u.voice.to_dict() for u in a] == [r["voice"] for r in _manifest(out)]
    assert plan_corpus(tiny(seed=1)) != a
    # a longer corpus keeps the items of a shorter one (same id, same text, same voice)
    longer = {u.id: u for u in plan_corpus(tiny(limit=None, hours=1.0))}
    shorter = plan_corpus(tiny(limit=None, hours=0.2))
    assert all(longer[u.id] == u for u in shorter)


def test_resume_rebuilds_only_missing_clips(corpus):
    out, _ = corpus
    records = _manifest(out)
    # one clip of each layout: SLUE-VoxPopuli ogg, SLUE-HVB wav named by its end, plain flac
    removed = [next(r for r in records if r["stream"] == s) for s in ("ner", "dialog", "ljspeech")]
    for r in removed:
        (out / r["audio"]).unlink()
    kept = {r["id"]: os.stat(out / r["audio"]).st_mtime_ns for r in records if r not in removed}
    stats = build_corpus(tiny(), out)
    assert (stats.synthesized, stats.reused, stats.failed) == (3, 27, ())
    assert all(os.stat(out / r["audio"]).st_mtime_ns == kept[r["id"]] for r in records if r["id"] in kept)
    again = _manifest(out)
    assert [(r["id"], r["task_labels"], r["voice"]) for r in again] == [
        (r["id"], r["task_labels"], r["voice"]) for r in records
    ]
    assert not list(out.rglob("*.tmp*"))


def test_conflicting_settings_are_refused(corpus):
    out, _ = corpus
    with pytest.raises(CorpusError, match=r"different settings \(seed\)"):
        build_corpus(tiny(seed=3), out)


def test_cli_dry_run_and_errors(tmp_path, capsys):
    assert synth_main(["--out", str(tmp_path / "c"), "--hours", "0.1", "--limit", "12", "--dry-run"]) == 0
    assert "12 utterances" in capsys.readouterr().out
    assert synth_main(["--out", str(tmp_path / "c"), "--data-dir", str(tmp_path / "nowhere"), "--dry-run"]) == 2
    assert "shared text data not found at" in capsys.readouterr().err
    assert synth_main(["--out", str(tmp_path / "c"), "--mix", "ljspeech=1,klingon=1", "--dry-run"]) == 2
    assert "unknown stream(s) ['klingon']" in capsys.readouterr().err
    base = ["--out", str(tmp_path / "c"), "--dry-run"]
    assert synth_main([*base, "--espeak-voices", "en-us+m1,zz-top"]) == 2
    assert "espeak-ng does not know voice(s) zz-top" in capsys.readouterr().err
    assert synth_main([*base, "--espeak-voices", f"en-us,{voices.VoiceConfig().heldout_espeak_voice}"]) == 2
    assert "held-out espeak voice 'en-gb-x-gbcwmd+f3' is also a training voice" in capsys.readouterr().err


def test_cli_espeak_voices_are_the_ones_drawn(tmp_path):
    out = tmp_path / "c"
    argv = ["--out", str(out), "--hours", "0.05", "--limit", "6", "--engines", "espeak", "--mix", "dialog=1",
            "--test-fraction", "0", "--espeak-voices", "en-us+m1, en-gb-scotland+f2", "--no-progress"]  # fmt: skip
    assert synth_main(argv) == 0
    config = json.loads((out / "synth_config.json").read_text())
    assert config["fingerprint"]["voices"]["espeak_voices"] == ["en-us+m1", "en-gb-scotland+f2"]
    drawn = {json.loads(line)["voice"]["voice"] for line in (out / "manifest.jsonl").read_text().splitlines()}
    assert drawn and drawn <= {"en-us+m1", "en-gb-scotland+f2"}


def test_template_only_corpus_needs_no_shared_data(tmp_path):
    mix = (("sentiment", 1.0), ("dialog", 1.0))
    config = tiny(mix=mix, limit=4, data_dir=tmp_path / "nowhere", voices=voices.VoiceConfig(engines=("espeak",)))
    stats = build_corpus(config, tmp_path / "c")
    assert stats.utterances == 4 and set(stats.hours_by_stream) == {"sentiment", "dialog"}
    assert "Tatoeba" not in (tmp_path / "c" / "LICENSE-NOTES.md").read_text().split("## This corpus")[0]


def test_importing_the_package_stays_light():
    code = "import sys, spokenlm.data; print(sorted({'faker', 'piper', 'onnxruntime', 'pandas'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_config_validation_names_the_value():
    with pytest.raises(ValueError, match="hours must be positive, got 0"):
        tiny(hours=0).validate()
    with pytest.raises(ValueError, match="held-out espeak voice 'en-us' is also a training voice"):
        replace(voices.VoiceConfig(), heldout_espeak_voice="en-us").validate()
    with pytest.raises(ValueError, match="strict sub-band"):
        replace(voices.VoiceConfig(), heldout_length_scale=(0.7, 0.9)).validate()


# --- voices and augmentation ---------------------------------------------------------------------


def _tone(seconds: float = 1.0, hz: float = 220.0) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def _peak_hz(wav: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(wav * np.hanning(len(wav))))
    return float(np.fft.rfftfreq(len(wav), 1 / SAMPLE_RATE)[spectrum.argmax()])


def test_speed_perturbation_scales_duration_and_pitch():
    y = voices.speed_perturb(_tone(), 1.1)
    assert abs(len(y) - SAMPLE_RATE / 1.1) < 20
    assert abs(_peak_hz(y) - 242.0) < 4


def _median_f0(wav: np.ndarray) -> float:
    """Median autocorrelation pitch (60-400 Hz) over loud 40 ms frames."""
    frame, found = 640, []
    for i in range(0, len(wav) - frame, frame // 2):
        x = wav[i : i + frame] - wav[i : i + frame].mean()
        if np.sqrt(np.mean(x**2)) < 0.05 * np.abs(wav).max():
            continue
        ac = np.correlate(x, x, "full")[frame - 1 :]
        lag = SAMPLE_RATE // 400 + int(np.argmax(ac[SAMPLE_RATE // 400 : SAMPLE_RATE // 60]))
        if ac[lag] > 0.4 * ac[0]:
            found.append(SAMPLE_RATE / lag)
    return float(np.median(found))


def test_pitch_shift_raises_pitch_and_keeps_tempo():
    synthesize = voices.Synthesizer(voices.VoiceConfig())
    base = voices.VoiceSetting(engine="espeak", voice="en-us", held_out=False, seed=3, speed_wpm=160, pitch=50)
    text = "The quick brown fox jumps over the lazy dog near the river bank."
    plain, shifted = synthesize(text, base), synthesize(text, replace(base, pitch_semitones=3.0))
    assert abs(len(shifted) / len(plain) - 1) < 0.03
    assert abs(_median_f0(shifted) / _median_f0(plain) - 2 ** (3 / 12)) < 0.05


def test_noise_is_added_at_the_requested_snr():
    rng = np.random.default_rng(0)
    clean = _tone(2.0)
    for color in ("white", "pink", "brown"):
        noisy = voices.add_noise(clean, 10.0, color, rng)
        snr = 10 * np.log10(np.mean(clean**2) / np.mean((noisy - clean) ** 2))
        assert abs(snr - 10.0) < 0.1, color


def test_reverb_keeps_length_and_level():
    y = voices.reverberate(_tone(), 0.4, np.random.default_rng(0))
    assert len(y) == SAMPLE_RATE and abs(np.abs(y).max() - 0.5) < 1e-4


def test_sample_voice_respects_engines_and_ranges():
    cfg = replace(voices.VoiceConfig(), engines=("espeak",))
    rng = random.Random(0)
    settings = [voices.sample_voice(cfg, rng) for _ in range(200)]
    assert {s.engine for s in settings} == {"espeak"}
    assert {s.voice for s in settings} <= set(cfg.espeak_voices)
    assert all(cfg.espeak_speed[0] <= s.speed_wpm <= cfg.espeak_speed[1] for s in settings)
    held = voices.sample_voice(cfg, rng, held_out=True)
    assert held.voice == cfg.heldout_espeak_voice and held.held_out
