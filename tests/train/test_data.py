import json
import re

import numpy as np
import pytest
import soundfile as sf
import torch

from spokenlm.train.data import AudioCache, duration_batches, read_manifest


def _manifest(tmp_path, rows):
    path = tmp_path / "manifest.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _row(i, split="fine-tune", duration=1.0, tasks=("asr",)):
    return {"id": f"u{i}", "split": split, "audio": f"a/u{i}.wav", "duration_s": duration,
            "task_labels": {"text": f"utterance {i}"}, "tasks": list(tasks)}  # fmt: skip


def test_read_manifest_filters_by_split_task_and_duration(tmp_path):
    rows = [_row(0), _row(1, "dev"), _row(2, tasks=("sentiment",)), _row(3, duration=40.0)]
    path = _manifest(tmp_path, rows)
    assert [u.id for u in read_manifest(path)] == ["u0", "u1", "u2", "u3"]
    assert [u.id for u in read_manifest(path, splits=("fine-tune",), tasks=("asr",), max_duration_s=30)] == ["u0"]
    assert read_manifest(path)[0].audio == tmp_path / "a" / "u0.wav"


def test_read_manifest_names_a_bad_line(tmp_path):
    path = _manifest(tmp_path, [_row(0)])
    path.write_text(path.read_text() + '{"id": "x"}\n')
    with pytest.raises(ValueError, match=re.escape(f"{path}:2: not a manifest row")):
        read_manifest(path)


def test_duration_batches_cover_every_item_once_within_budget():
    class U:
        def __init__(self, d):
            self.duration_s = d

    utts = [U(d) for d in np.random.default_rng(0).uniform(0.5, 8.0, size=200)]
    batches = duration_batches(utts, max_batch_s=40.0, seed=1)
    assert sorted(i for b in batches for i in b) == list(range(200))
    for b in batches:
        assert len(b) == 1 or max(utts[i].duration_s for i in b) * len(b) <= 40.0
    assert batches != duration_batches(utts, max_batch_s=40.0, seed=2)  # the seed shuffles batch order


def test_audio_cache_round_trips_within_int16_precision(tmp_path):
    wav = (0.5 * np.sin(np.linspace(0, 200, 16000))).astype(np.float32)
    (tmp_path / "a").mkdir()
    sf.write(tmp_path / "a" / "u0.wav", wav, 16000, subtype="FLOAT")
    (utt,) = read_manifest(_manifest(tmp_path, [_row(0)]))
    cache = AudioCache()
    batch = cache.batch([utt, utt])
    assert batch.wav.shape == (2, 16000) and batch.lengths.tolist() == [16000, 16000]
    torch.testing.assert_close(batch.wav[0], torch.from_numpy(wav), atol=1 / 32767, rtol=0)
