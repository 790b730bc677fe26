"""The FSDD manifest writer (spokenlm/data/fsdd.py): splits by speaker and take, rows the recipes read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from spokenlm.data.fsdd import write_fsdd_manifest
from spokenlm.train.data import read_manifest

SHARED_FSDD = Path(__file__).resolve().parents[3] / "shared" / "data" / "speech" / "fsdd_train"


def _fake_fsdd(root: Path, rows: list[tuple[str, str, str, str]]) -> Path:
    root.mkdir()
    for file, *_ in rows:
        sf.write(root / file, np.zeros(4000, dtype=np.float32), 8000)
    lines = ["file\tdigit\tspeaker\ttranscript"] + ["\t".join(r) for r in rows]
    (root / "manifest.tsv").write_text("\n".join(lines) + "\n")
    return root


def test_splits_hold_out_a_speaker_and_early_takes(tmp_path) -> None:
    src = _fake_fsdd(tmp_path / "fsdd", [
        ("3_george_20.wav", "3", "george", "three"), ("3_george_7.wav", "3", "george", "three"),
        ("0_lucas_11.wav", "0", "lucas", "zero"), ("9_yweweler_30.wav", "9", "yweweler", "nine"),
    ])  # fmt: skip
    manifest = write_fsdd_manifest(src, tmp_path / "out")
    utts = {u.id: u for u in read_manifest(manifest)}
    assert {k: u.split for k, u in utts.items()} == {
        "fsdd_3_george_20": "fine-tune", "fsdd_3_george_7": "test", "fsdd_0_lucas_11": "dev", "fsdd_9_yweweler_30": "test",
    }  # fmt: skip
    george = utts["fsdd_3_george_20"]
    assert george.labels["text"] == "three" and george.tasks == ("asr",) and george.duration_s == 0.5
    assert george.audio.resolve() == (src / "3_george_20.wav").resolve()


def test_bad_rows_are_named(tmp_path) -> None:
    src = _fake_fsdd(tmp_path / "a", [("3_george_20.wav", "3", "george", "four")])
    with pytest.raises(ValueError, match=r"manifest.tsv:2: transcript 'four' / speaker 'george' do not match '3_george_20.wav'"):
        write_fsdd_manifest(src, tmp_path / "out")
    src = _fake_fsdd(tmp_path / "b", [("george.wav", "3", "george", "three")])
    with pytest.raises(ValueError, match=r"file name 'george.wav' is not <digit>_<speaker>_<take>.wav"):
        write_fsdd_manifest(src, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match=r"has no manifest.tsv: not an FSDD folder"):
        write_fsdd_manifest(tmp_path, tmp_path / "out")


def test_the_shared_recordings(tmp_path) -> None:
    if not SHARED_FSDD.is_dir():
        pytest.skip("../shared/data/speech/fsdd_train is not beside this checkout")
    utts = read_manifest(write_fsdd_manifest(SHARED_FSDD, tmp_path / "out"))
    assert len(utts) == 2700
    by_split = {s: [u for u in utts if u.split == s] for s in ("fine-tune", "dev", "test")}
    assert {s: len(v) for s, v in by_split.items()} == {"fine-tune": 1850, "dev": 150, "test": 700}
    train_speakers = {u.voice["speaker"] for u in by_split["fine-tune"]}
    assert "yweweler" not in train_speakers and len(train_speakers) == 5
