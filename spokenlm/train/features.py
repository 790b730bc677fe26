"""Encoder features computed once per utterance and kept on disk, for recipes over a frozen encoder.

A frozen encoder gives the same features every epoch, and it is the expensive part: Whisper tiny.en
runs at ~40x real time on 2 cores, so 20 h of audio cost ~30 min to encode, while a CTC head or an
adapter over the features trains at thousands of audio-hours per hour. The ctc and speechlm recipes
therefore encode each utterance once and read the cache afterwards, and the speechlm recipe reuses
the ctc recipe's cache when the encoder is the same.

Recordings are cut at pauses into chunks of at most ``max_chunk_s`` exactly as ``SpeechLM`` does at
inference (``spokenlm.model.encode_chunks``), and each chunk's features are kept with its start time,
so a recipe can compress chunk by chunk and join the tokens as ``join_chunks`` does (``chunk_batches``).

Layout under the cache root (``<cache>/features`` by default, see ``spokenlm.bases.cache_dir``):

    <fingerprint>/encoder.json              what the fingerprint covers (kind, config)
    <fingerprint>/shard-NN.safetensors      {"<utterance id>#<chunk>@<start sample>": (T, D) float16}

The fingerprint is the sha256 of the encoder's config and weights, so a different checkpoint, layer
choice or fine-tuned copy never reads another's features. Shards are written atomically (a temp file,
then rename): an interrupted build resumes with the shards it finished. Utterances are grouped into
shards by id hash, so a shard's content does not depend on which other splits were cached with it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from spokenlm.audio import MAX_CHUNK_S, SAMPLE_RATE
from spokenlm.encoders.base import EncoderOutput
from spokenlm.train.data import AudioCache, Utterance, duration_batches

if TYPE_CHECKING:
    from spokenlm.model import ChunkBatch

NUM_SHARDS = 64  # utterances are spread over this many shards by id hash: ~300 per shard at 20 h
CACHE_DTYPE = torch.float16  # Whisper's own weights are fp16; features keep ~3 significant digits


def module_fingerprint(module: nn.Module) -> str:
    """sha256 over a part's class, config and every parameter and buffer (bytes and names), and the
    bytes of the word-LM file a CTC compressor reads its transcripts with (``lm_path``), if any."""
    digest = hashlib.sha256(type(module).__name__.encode())
    config = getattr(module, "config", None)
    digest.update(repr(config).encode())
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    lm_path = getattr(module, "lm_path", None)
    if lm_path is not None:
        digest.update(Path(lm_path).read_bytes())
    return digest.hexdigest()


def _save_atomic(tensors: dict[str, Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file so that a reader sees the old file or the new one, never half of one
    (a temp file in the same directory, then rename): an interrupted build keeps the shards it finished."""
    from safetensors.torch import save_file

    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def release_freed_memory() -> None:
    """Hand memory freed by Python back to the OS (glibc's malloc_trim): after a pass over the
    feature shards glibc otherwise keeps GBs of freed heap, which the training process then carries
    as RSS. A no-op where there is no glibc. The standard library has no call for this."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim this way
        pass


def _shard_of(utt_id: str) -> int:
    return int(hashlib.sha1(utt_id.encode()).hexdigest()[:8], 16) % NUM_SHARDS


@dataclass(frozen=True)
class CachedChunk:
    start_s: float  # offset of the chunk in its recording
    features: Tensor  # (T, D) float16


def _key(utt_id: str, index: int, start_sample: int) -> str:
    return f"{utt_id}#{index}@{start_sample}"


def _parse_key(key: str) -> tuple[str, int, int]:
    utt_id, rest = key.rsplit("#", 1)
    index, start = rest.split("@")
    return utt_id, int(index), int(start)


class FeatureCache:
    """Encoder features per utterance (one entry per chunk), built once (`build`), then in memory."""

    def __init__(self, root: str | Path, encoder: nn.Module, *, max_chunk_s: float = MAX_CHUNK_S) -> None:
        self.encoder = encoder
        self.max_chunk_s = max_chunk_s
        digest = hashlib.sha256(f"{module_fingerprint(encoder)} max_chunk_s={max_chunk_s}".encode())
        self.fingerprint = digest.hexdigest()
        self.dir = Path(root) / self.fingerprint[:16]
        self.frame_rate_hz = float(encoder.frame_rate_hz)
        self._chunks: dict[str, list[CachedChunk]] = {}

    def _shard_path(self, shard: int) -> Path:
        return self.dir / f"shard-{shard:02d}.safetensors"

    def build(
        self,
        utts: Sequence[Utterance],
        audio: AudioCache,
        *,
        max_batch_s: float = 120.0,
        progress: Callable[[int, int], None] | None = None,
        part: tuple[int, int] = (0, 1),
        keep: bool = True,
    ) -> None:
        """Encode every utterance not on disk yet (one shard at a time) and hold all of them in memory
        (`keep=False`: only write them; read them later shard by shard with `by_shard`).

        part=(rank, workers): with several workers each encodes only the shards s with s % workers ==
        rank and loads those; call `load` after a barrier to read the others' shards too."""
        self.dir.mkdir(parents=True, exist_ok=True)
        manifest = self.dir / "encoder.json"
        if not manifest.is_file():
            info = {"fingerprint": self.fingerprint, "kind": type(self.encoder).__name__,
                    "config": repr(getattr(self.encoder, "config", None))}  # fmt: skip
            manifest.write_text(json.dumps(info, indent=2) + "\n")
        by_shard: dict[int, list[Utterance]] = {}
        for utt in utts:
            by_shard.setdefault(_shard_of(utt.id), []).append(utt)
        rank, workers = part
        done = 0
        for shard, members in sorted(by_shard.items()):
            if shard % workers != rank:
                continue
            path = self._shard_path(shard)
            have = {_parse_key(k)[0] for k in self._shard_keys(shard)}  # the header only: no tensors read
            missing = [u for u in members if u.id not in have]
            if missing:
                stored = self._read_shard(shard)
                stored.update(self._encode(missing, audio, max_batch_s))
                _save_atomic(stored, path)
                if keep:
                    self._keep(stored, members)
                del stored
            elif keep:
                self._keep(self._read_shard(shard), members)
            done += len(members)
            if progress is not None:
                progress(done, len(utts))

    def load(self, utts: Sequence[Utterance]) -> None:
        """Hold the cached features of `utts` in memory (after every worker's `build`)."""
        by_shard: dict[int, list[Utterance]] = {}
        for utt in utts:
            if utt.id not in self._chunks:
                by_shard.setdefault(_shard_of(utt.id), []).append(utt)
        for shard, members in sorted(by_shard.items()):
            self._keep(self._read_shard(shard), members)
            missing = [u.id for u in members if u.id not in self._chunks]
            if missing:
                raise KeyError(f"no cached features for utterance {missing[0]} in {self._shard_path(shard)}")

    def by_shard(self, utts: Sequence[Utterance]) -> Iterator[list[Utterance]]:
        """The utterances of `utts` one shard at a time, each shard's features held only while the
        caller handles that group: a pass over 20 h of features (2.7 GB) never holds more than one
        shard (~45 MB). Features already held (`build`/`load`) stay held."""
        groups: dict[int, list[Utterance]] = {}
        for utt in utts:
            groups.setdefault(_shard_of(utt.id), []).append(utt)
        for _, members in sorted(groups.items()):
            fresh = [u for u in members if u.id not in self._chunks]
            self.load(fresh)
            yield members
            for utt in fresh:
                del self._chunks[utt.id]
        release_freed_memory()

    def _shard_keys(self, shard: int) -> list[str]:
        from safetensors import safe_open

        path = self._shard_path(shard)
        if not path.is_file():
            return []
        with safe_open(str(path), framework="pt") as f:
            return list(f.keys())

    def _read_shard(self, shard: int) -> dict[str, Tensor]:
        from safetensors.torch import load_file

        path = self._shard_path(shard)
        return load_file(str(path)) if path.is_file() else {}

    def _keep(self, stored: dict[str, Tensor], members: Sequence[Utterance]) -> None:
        wanted = {u.id for u in members}
        chunks: dict[str, list[tuple[int, CachedChunk]]] = {}
        for key, value in stored.items():
            utt_id, index, start = _parse_key(key)
            if utt_id in wanted:
                chunks.setdefault(utt_id, []).append((index, CachedChunk(start / SAMPLE_RATE, value)))
        self._chunks.update((k, [c for _, c in sorted(v, key=lambda x: x[0])]) for k, v in chunks.items())

    @torch.inference_mode()
    def _encode(self, utts: list[Utterance], audio: AudioCache, max_batch_s: float) -> dict[str, Tensor]:
        from spokenlm.model import encode_chunks

        was_training = self.encoder.training
        self.encoder.eval()
        out: dict[str, Tensor] = {}
        for idx in duration_batches(utts, max_batch_s=max_batch_s, seed=0, shuffle=False):
            batch = [utts[i] for i in idx]
            batches = encode_chunks(self.encoder, [audio.get(u) for u in batch], max_chunk_s=self.max_chunk_s,
                                    max_chunks_per_batch=len(batch))  # fmt: skip
            counts: dict[int, int] = {}
            for chunk_batch in batches:
                encoded = chunk_batch.encoded
                for j, (item, start_s) in enumerate(zip(chunk_batch.items, chunk_batch.starts_s)):
                    index = counts.get(item, 0)
                    counts[item] = index + 1
                    key = _key(batch[item].id, index, round(start_s * SAMPLE_RATE))
                    out[key] = encoded.features[j, : int(encoded.lengths[j])].to(CACHE_DTYPE).clone()
            for utt in batch:  # the waveform is no longer needed once its features are cached
                audio.drop(utt)
        self.encoder.train(was_training)
        return out

    def __contains__(self, utt_id: str) -> bool:
        return utt_id in self._chunks

    def chunks(self, utt: Utterance) -> list[CachedChunk]:
        if utt.id not in self._chunks:
            raise KeyError(f"no cached features for utterance {utt.id}; call build() with it first")
        return self._chunks[utt.id]

    def get(self, utt: Utterance) -> Tensor:
        """(T, D) features of a recording that fit one chunk (the CTC recipe's clips of <= 30 s)."""
        chunks = self.chunks(utt)
        if len(chunks) != 1:
            raise ValueError(f"utterance {utt.id} was cut into {len(chunks)} chunks; read them with chunks()")
        return chunks[0].features

    def chunk_batches(self, utts: Sequence[Utterance], dtype: torch.dtype = torch.float32) -> list[ChunkBatch]:
        """The cached chunks of `utts` as the `ChunkBatch`es `encode_chunks` would give (one batch),
        for `spokenlm.model.join_chunks`."""
        from spokenlm.model import ChunkBatch

        items, starts, feats = [], [], []
        for i, utt in enumerate(utts):
            for chunk in self.chunks(utt):
                items.append(i)
                starts.append(chunk.start_s)
                feats.append(chunk.features)
        return [ChunkBatch(items=items, starts_s=starts, encoded=self._pad(feats, dtype))]

    def batch(self, utts: Sequence[Utterance], dtype: torch.dtype = torch.float32) -> EncoderOutput:
        """The cached features of `utts`, right-padded: what the encoder would return (no hidden states)."""
        return self._pad([self.get(u) for u in utts], dtype)

    def _pad(self, feats: list[Tensor], dtype: torch.dtype) -> EncoderOutput:
        return EncoderOutput(
            features=nn.utils.rnn.pad_sequence(feats, batch_first=True).to(dtype),  # (B, T, D)
            lengths=torch.tensor([f.shape[0] for f in feats], dtype=torch.long),
            frame_rate_hz=self.frame_rate_hz,
        )


class TokenCache:
    """A compressor's speech tokens (and CTC transcripts) per utterance, kept on disk beside the
    features they were computed from, so that a restarted speechlm run does not compress its 20 h again.

    The compressor's context layers make that pass cost ~10 min on 2 cores, and a run that spans
    sessions restarts once per session; each arm of the compressor ablation has its own compressor, so
    a key over the features and the compressor (weights, config and word-LM file, `module_fingerprint`)
    keeps every arm's tokens apart. Layout under the root (``<cache>/tokens`` by default):

        <key>/shard-NN.safetensors   {"<utterance id>": (N, D) float16}, metadata {"transcripts": JSON}

    Shards follow the feature cache's (utterance id hash) and are written atomically. 20 h at ~12
    tokens/s of 384 values (Whisper tiny's width) in float16 is ~0.7 GB; stacking 4 frames, ~2.6 GB.
    """

    def __init__(self, root: str | Path, features: FeatureCache, compressor: nn.Module) -> None:
        digest = hashlib.sha256(f"{features.fingerprint} {module_fingerprint(compressor)}".encode())
        self.dir = Path(root) / digest.hexdigest()[:16]

    def _shard_path(self, shard: int) -> Path:
        return self.dir / f"shard-{shard:02d}.safetensors"

    def _read_shard(self, shard: int) -> tuple[dict[str, Tensor], dict[str, str | None]]:
        from safetensors import safe_open

        path = self._shard_path(shard)
        if not path.is_file():
            return {}, {}
        with safe_open(str(path), framework="pt") as f:
            tokens = {key: f.get_tensor(key) for key in f.keys()}
            transcripts = json.loads((f.metadata() or {}).get("transcripts", "{}"))
        return tokens, transcripts

    def tokens(
        self, utts: Sequence[Utterance],
        compute: Callable[[list[Utterance]], tuple[dict[str, Tensor], dict[str, str | None]]],
    ) -> tuple[dict[str, Tensor], dict[str, str | None]]:  # fmt: skip
        """id -> tokens and id -> transcript for `utts`: read from disk where cached, else from
        `compute(utterances of one shard)` (which must return both for every utterance it is given),
        and stored before the next shard is computed."""
        self.dir.mkdir(parents=True, exist_ok=True)
        by_shard: dict[int, list[Utterance]] = {}
        for utt in utts:
            by_shard.setdefault(_shard_of(utt.id), []).append(utt)
        tokens: dict[str, Tensor] = {}
        transcripts: dict[str, str | None] = {}
        for shard, members in sorted(by_shard.items()):
            stored, texts = self._read_shard(shard)
            missing = [u for u in members if u.id not in stored]
            if missing:
                new_tokens, new_texts = compute(missing)
                lacking = [u.id for u in missing if u.id not in new_tokens or u.id not in new_texts]
                if lacking:
                    raise KeyError(f"the token computation gave nothing for utterance {lacking[0]}")
                stored.update((u.id, new_tokens[u.id].to(CACHE_DTYPE)) for u in missing)
                texts.update((u.id, new_texts[u.id]) for u in missing)
                _save_atomic(stored, self._shard_path(shard), {"transcripts": json.dumps(texts)})
            for utt in members:
                tokens[utt.id] = stored[utt.id]
                transcripts[utt.id] = texts.get(utt.id)
        return tokens, transcripts
