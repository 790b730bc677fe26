"""The encoder feature cache (spokenlm/train/features.py): what it stores equals what the encoder
gives, chunked as SpeechLM chunks long recordings; it resumes without re-encoding; its key follows
the weights. The token cache beside it: computed once, read back equal, keyed by the compressor's
weights and word-LM file."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import soundfile as sf
import torch

from spokenlm.encoders.whisper import build_whisper_encoder, whisper_test
from spokenlm.model import encode_chunks
from spokenlm.train.data import AudioCache, Utterance
from spokenlm.train.features import FeatureCache, TokenCache, module_fingerprint

SECONDS = [1.5, 2.25, 0.8, 3.1]


def _tone(seconds: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * 16_000)) / 16_000
    return 0.2 * torch.sin(2 * torch.pi * (120 + 40 * seed) * t) + 0.01 * torch.randn(t.shape[0], generator=g)


@pytest.fixture(scope="module")
def utts(tmp_path_factory) -> list[Utterance]:
    root = tmp_path_factory.mktemp("clips")
    out = []
    for i, seconds in enumerate(SECONDS):
        path = root / f"c{i}.wav"
        sf.write(path, _tone(seconds, i).numpy(), 16_000)
        out.append(Utterance(id=f"c{i}", split="dev", audio=path, duration_s=seconds, labels={"text": "x"}))
    return out


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return build_whisper_encoder(whisper_test()).eval()


def test_cached_features_equal_the_encoder(tmp_path, utts, encoder) -> None:
    cache = FeatureCache(tmp_path, encoder)
    cache.build(utts, AudioCache())
    audio = AudioCache()
    batch = cache.batch(utts)
    for i, utt in enumerate(utts):
        wav = audio.get(utt)
        with torch.no_grad():
            ref = encoder(wav[None], torch.tensor([wav.shape[0]]))
        n = int(ref.lengths[0])
        assert int(batch.lengths[i]) == n and cache.get(utt).dtype == torch.float16
        torch.testing.assert_close(batch.features[i, :n], ref.features[0], atol=2e-3, rtol=2e-3)
        assert torch.all(batch.features[i, n:] == 0)
    assert batch.frame_rate_hz == 50.0


def test_long_recordings_are_cached_as_speechlm_chunks_them(tmp_path, utts, encoder) -> None:
    cache = FeatureCache(tmp_path, encoder, max_chunk_s=1.0)  # every clip over 1 s is cut
    cache.build(utts, AudioCache())
    audio = AudioCache()
    expected = encode_chunks(encoder, [audio.get(u) for u in utts], max_chunk_s=1.0, max_chunks_per_batch=64)
    (ref,) = expected
    got = cache.chunk_batches(utts)[0]
    assert got.items == ref.items and got.starts_s == pytest.approx(ref.starts_s)
    assert got.encoded.lengths.tolist() == ref.encoded.lengths.tolist()
    torch.testing.assert_close(got.encoded.features, ref.encoded.features, atol=2e-3, rtol=2e-3)
    assert len(cache.chunks(utts[3])) >= 2
    with pytest.raises(ValueError, match=r"utterance c3 was cut into \d+ chunks; read them with chunks\(\)"):
        cache.get(utts[3])


def test_build_resumes_and_the_key_follows_the_weights(tmp_path, utts, encoder) -> None:
    cache = FeatureCache(tmp_path, encoder)
    cache.build(utts[:2], AudioCache())
    shards = {p: p.stat().st_mtime_ns for p in cache.dir.glob("shard-*.safetensors")}
    again = FeatureCache(tmp_path, encoder)
    again.build(utts[:2], AudioCache())
    assert {p: p.stat().st_mtime_ns for p in again.dir.glob("shard-*.safetensors")} == shards  # nothing rewritten
    again.build(utts, AudioCache())  # the other two are added
    assert all(u.id in again for u in utts)
    with pytest.raises(KeyError, match=r"no cached features for utterance other"):
        again.get(replace(utts[0], id="other"))

    other = build_whisper_encoder(whisper_test()).eval()  # different random weights
    assert module_fingerprint(other) != module_fingerprint(encoder)
    assert FeatureCache(tmp_path, other).dir != cache.dir
    assert FeatureCache(tmp_path, encoder, max_chunk_s=10.0).dir != cache.dir


def test_by_shard_holds_one_shard_at_a_time(tmp_path, utts, encoder) -> None:
    written = FeatureCache(tmp_path, encoder)
    written.build(utts, AudioCache(), keep=False)
    assert not any(u.id in written for u in utts)  # on disk only
    held = FeatureCache(tmp_path, encoder)
    held.load(utts)

    seen = []
    for group in written.by_shard(utts):
        assert all(u.id in written for u in group)
        assert not any(u.id in written for u in utts if u not in group)  # the other shards are not held
        for utt in group:
            torch.testing.assert_close(written.get(utt), held.get(utt), rtol=0, atol=0)
        seen += [u.id for u in group]
    assert sorted(seen) == sorted(u.id for u in utts)
    assert not any(u.id in written for u in utts)  # all released after the pass

    held_before = [u.id in held for u in utts]
    assert sum(1 for _ in held.by_shard(utts)) >= 1
    assert [u.id in held for u in utts] == held_before  # what was held before stays held


class _Compressor(torch.nn.Module):
    """Stands in for a compressor: the token cache reads only its weights, config and lm_path."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.proj = torch.nn.Linear(3, 4)
        self.config = {"mode": "average"}
        self.lm_path = None


def _computer(calls: list[list[str]]):
    def compute(utts):
        calls.append([u.id for u in utts])
        tokens = {u.id: torch.full((int(u.duration_s * 10), 4), u.duration_s) for u in utts}
        return tokens, {u.id: (None if u.id == "c2" else f"text of {u.id}") for u in utts}

    return compute


def test_token_cache_computes_once_and_reads_back_the_same(tmp_path, utts, encoder) -> None:
    features, compressor = FeatureCache(tmp_path / "features", encoder), _Compressor(0)
    calls: list[list[str]] = []
    tokens, texts = TokenCache(tmp_path / "tokens", features, compressor).tokens(utts[:3], _computer(calls))
    assert sorted(i for call in calls for i in call) == ["c0", "c1", "c2"]
    assert texts == {"c0": "text of c0", "c1": "text of c1", "c2": None}
    assert tokens["c1"].shape == (22, 4) and tokens["c1"].dtype == torch.float16

    calls.clear()  # a restart: a new cache object over the same features and compressor
    again, again_texts = TokenCache(tmp_path / "tokens", features, _Compressor(0)).tokens(utts, _computer(calls))
    assert calls == [["c3"]]  # only the utterance not cached before is computed
    assert again_texts == {**texts, "c3": "text of c3"}
    for utt in utts[:3]:
        assert torch.equal(again[utt.id], tokens[utt.id])


def test_token_cache_key_follows_the_compressor_and_its_lm(tmp_path, utts, encoder) -> None:
    features = FeatureCache(tmp_path / "features", encoder)
    compressor = _Compressor(0)
    dirs = {TokenCache(tmp_path, features, compressor).dir, TokenCache(tmp_path, features, _Compressor(1)).dir}
    lm = tmp_path / "lm.arpa"
    lm.write_text("one")
    compressor.lm_path = lm
    dirs.add(TokenCache(tmp_path, features, compressor).dir)
    lm.write_text("two")  # the same path, another LM: other transcripts
    dirs.add(TokenCache(tmp_path, features, compressor).dir)
    other_features = FeatureCache(tmp_path / "features", encoder, max_chunk_s=10.0)
    dirs.add(TokenCache(tmp_path, other_features, compressor).dir)
    assert len(dirs) == 5


def test_token_cache_refuses_a_computation_that_leaves_one_out(tmp_path, utts, encoder) -> None:
    features = FeatureCache(tmp_path / "features", encoder)

    def forgetful(group):
        return {u.id: torch.zeros(1, 4) for u in group if u.id != "c1"}, {u.id: "" for u in group}

    with pytest.raises(KeyError, match="the token computation gave nothing for utterance c1"):
        TokenCache(tmp_path / "tokens", features, _Compressor(0)).tokens(utts, forgetful)
