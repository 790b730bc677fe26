"""Stage actors: the SpeechLM forward pass as four Ray actors chained by ObjectRefs.

    AudioStage (load, 16 kHz mono) -> EncoderStage (chunk at pauses, encode)
        -> CompressStage (compressor + adapter) -> DecodeStage (LLM, task parsing)

`SpeechLM.run` (spokenlm/model.py) is the in-process reference and these stages run the very functions
it is made of, split at its seams (DESIGN.md §1): `encode_chunks` (chunking at pauses, encoder batches
of at most `max_chunks_per_batch` chunks), `compress_speech` (each recording's chunk tokens joined
with their times, the adapter) and `decode_speech` (prompts, decoding, entity timing), passing the
library's `SpeechTokens` along. Each actor loads only its part of the bundle directory (DESIGN.md §3)
and holds the CPU / GPU fraction its `StageResources` asks for, so the encoder and the LLM can sit on
different GPUs while audio decoding stays on CPUs, and consecutive files flow through the chain
concurrently (file 2 is encoded while file 1 decodes).

Not here: request batching across clients (serve/), the SLUE job (slue_eval.py).
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import torch
from torch import Tensor

from spokenlm.audio import SAMPLE_RATE, AudioError, load_audio
from spokenlm.encoders.base import EncoderOutput
from spokenlm.model import (
    decode_speech,
    load_bundle_compressor,
    load_bundle_draft,
    load_bundle_encoder,
    load_bundle_llm,
    load_bundle_transcriber,
    load_bundle_transcriber_config,
    read_bundle_meta,
)
from spokenlm.speech import MAX_CHUNKS_PER_BATCH, ChunkBatch, SpeechTokens, compress_speech, encode_chunks
from spokenlm.tasks import TaskRequest, build_prompt

if TYPE_CHECKING:
    from spokenlm.lm import GenerationConfig
    from spokenlm.output import RunOutput


# --- config ----------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class StageResources:
    """What one stage actor reserves from the Ray cluster."""

    num_cpus: float = 0.25
    """Logical CPUs; fractions let small machines hold all four actors."""

    num_gpus: float = 0.0
    """GPU fraction; > 0 puts the stage's weights and tensors on its GPU."""

    def validate(self, name: str) -> None:
        if not self.num_cpus >= 0 or not self.num_gpus >= 0:
            raise ValueError(f"{name}: num_cpus and num_gpus must be >= 0, got {self.num_cpus}, {self.num_gpus}")
        if self.num_gpus > 1 and self.num_gpus != int(self.num_gpus):
            raise ValueError(f"{name}: num_gpus above 1 must be a whole number, got {self.num_gpus}")


@dataclass(frozen=True, kw_only=True)
class StagesConfig:
    """Resources per stage actor, and how many files may be in the chain at once."""

    audio: StageResources = StageResources()
    encoder: StageResources = StageResources()
    compress: StageResources = StageResources()
    llm: StageResources = StageResources()

    max_in_flight: int = 4
    """Files submitted ahead of the one being collected: bounds object-store use on long file lists."""

    max_chunks_per_batch: int = MAX_CHUNKS_PER_BATCH
    """Chunks per encoder forward pass; keep SpeechLM's value (spokenlm.speech) for identical outputs."""

    def validate(self) -> None:
        for name in ("audio", "encoder", "compress", "llm"):
            getattr(self, name).validate(name)
        if self.max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {self.max_in_flight}")
        if self.max_chunks_per_batch < 1:
            raise ValueError(f"max_chunks_per_batch must be >= 1, got {self.max_chunks_per_batch}")


def cpu_stages() -> StagesConfig:
    """All four stages on a quarter CPU each: one node, one core is enough."""
    return StagesConfig()


def gpu_stages() -> StagesConfig:
    """Encoder and compressor share one GPU half; the LLM gets the other half."""
    return StagesConfig(
        audio=StageResources(num_cpus=1.0),
        encoder=StageResources(num_cpus=1.0, num_gpus=0.25),
        compress=StageResources(num_cpus=0.5, num_gpus=0.25),
        llm=StageResources(num_cpus=1.0, num_gpus=0.5),
    )


# --- typed values passed between stages ------------------------------------------------------------


@dataclass(frozen=True)
class LoadedAudio:
    wav: Tensor  # (S,) float32 mono at 16 kHz
    timing_ms: dict[str, float]


@dataclass(frozen=True)
class EncodedSpeech:
    """The encoder's output: chunk batches not yet compressed (SpeechTokens begin at the compressor)."""

    batches: list[ChunkBatch]
    durations_s: list[float]  # per recording
    timing_ms: list[dict[str, float]]  # per recording: this stage and the ones before it


@dataclass(frozen=True)
class FileOutput:
    """One input file of `run_files_on_ray`: its output, or why it could not be read."""

    path: str
    output: RunOutput | None
    error: str | None = None  # the AudioError message; output is None then


# --- the actors ------------------------------------------------------------------------------------


class AudioStage:
    """Decodes files to 16 kHz mono; an unreadable file raises AudioError through the chain."""

    def load(self, path: str) -> LoadedAudio:
        t0 = time.perf_counter()
        wav = load_audio(path)
        return LoadedAudio(wav=wav, timing_ms={"load_audio": _ms(t0)})


class EncoderStage:
    def __init__(self, model_dir: str, max_chunks_per_batch: int = MAX_CHUNKS_PER_BATCH):
        _set_threads()
        self.device = _actor_device()
        encoder, self.max_chunk_s = load_bundle_encoder(model_dir)
        self.encoder = encoder.to(self.device)
        self.max_chunks_per_batch = max_chunks_per_batch
        self.keep_audio = load_bundle_transcriber_config(model_dir) is not None  # the compress stage's transcriber reads it

    def encode(self, *audio: LoadedAudio) -> EncodedSpeech:
        t0 = time.perf_counter()
        waves = [a.wav for a in audio]
        batches = encode_chunks(self.encoder, waves, max_chunk_s=self.max_chunk_s,
                                max_chunks_per_batch=self.max_chunks_per_batch, keep_audio=self.keep_audio)  # fmt: skip
        batches = [replace(b, encoded=_to_cpu(b.encoded)) for b in batches]
        encoder_ms = _ms(t0)
        timing = [a.timing_ms | {"encoder": encoder_ms} for a in audio]
        durations = [w.shape[-1] / SAMPLE_RATE for w in waves]
        return EncodedSpeech(batches=batches, durations_s=durations, timing_ms=timing)


class CompressStage:
    def __init__(self, model_dir: str):
        _set_threads()
        self.device = _actor_device()
        compressor, adapter = load_bundle_compressor(model_dir)
        self.compressor, self.adapter = compressor.to(self.device), adapter.to(self.device)
        # Whisper's reading of each chunk, judged against the CTC head's (spokenlm.transcriber): it runs
        # here, where both readings and the CTC log-probabilities are (the chunks carry their audio)
        self.transcriber = load_bundle_transcriber(model_dir)

    def compress(self, encoded: EncodedSpeech) -> SpeechTokens:
        batches = [replace(b, encoded=_to_device(b.encoded, self.device)) for b in encoded.batches]
        speech = compress_speech(self.compressor, self.adapter, batches, encoded.durations_s, timing_ms=encoded.timing_ms,
                                 transcriber=self.transcriber)  # fmt: skip
        return SpeechTokens.batch([speech.item(i) for i in range(len(encoded.durations_s))])  # on the CPU


class DecodeStage:
    def __init__(self, model_dir: str):
        _set_threads()
        device = _actor_device()
        self.llm = load_bundle_llm(model_dir).to(device)
        draft = load_bundle_draft(model_dir)
        self.draft = None if draft is None else draft.to(device)

    def decode(self, speech: SpeechTokens, requests: list[TaskRequest], generation: GenerationConfig) -> list[RunOutput]:
        return decode_speech(self.llm, speech, requests, generation, draft=self.draft)


class StagePipeline:
    """The four stage actors of one bundle; `submit` chains recordings through them by ObjectRefs."""

    def __init__(self, model_dir: str | Path, config: StagesConfig | None = None):
        import ray

        self.config = c = config or StagesConfig()
        c.validate()
        read_bundle_meta(model_dir)  # fail here, not inside three actors
        model_dir = str(model_dir)

        def actor(cls: type, resources: StageResources, *args):
            options = {"num_cpus": resources.num_cpus, "num_gpus": resources.num_gpus}
            return ray.remote(cls).options(**options).remote(*args)

        self.actors: dict[str, Any] = {
            "audio": actor(AudioStage, c.audio),
            "encoder": actor(EncoderStage, c.encoder, model_dir, c.max_chunks_per_batch),
            "compress": actor(CompressStage, c.compress, model_dir),
            "llm": actor(DecodeStage, c.llm, model_dir),
        }

    def submit(self, paths: Sequence[str], requests: Sequence[TaskRequest], generation: GenerationConfig):
        """An ObjectRef to the RunOutputs of `requests[i]` on file `paths[i]`, decoded as one batch."""
        if len(paths) != len(requests):
            raise ValueError(f"got {len(paths)} files but {len(requests)} requests")
        a = self.actors
        audio = [a["audio"].load.remote(str(p)) for p in paths]
        encoded = a["encoder"].encode.remote(*audio)
        compressed = a["compress"].compress.remote(encoded)
        return a["llm"].decode.remote(compressed, list(requests), generation)

    def shutdown(self) -> None:
        import ray

        for handle in self.actors.values():
            ray.kill(handle)
        self.actors = {}


def run_files_on_ray(
    model_dir: str | Path,
    files: Sequence[str | Path],
    request: TaskRequest,
    generation: GenerationConfig | None = None,
    resources: StagesConfig | None = None,
) -> list[FileOutput]:
    """`spokenlm run --ray`: `request` on every file through the stage actors, one file per chain
    (as the CLI runs them in process, so outputs match it), in input order. An unreadable file gives
    a FileOutput with `error` set; the others still run. Starts a local Ray if none is running."""
    from spokenlm.lm import GenerationConfig

    build_prompt(request)  # validate before starting anything
    generation = generation or GenerationConfig()
    generation.validate()
    read_bundle_meta(model_dir)
    outputs: list[FileOutput] = []
    with ray_session():
        pipeline = StagePipeline(model_dir, resources)
        pending: deque = deque()
        try:
            for path in files:
                pending.append((str(path), pipeline.submit([str(path)], [request], generation)))
                if len(pending) >= pipeline.config.max_in_flight:
                    outputs.append(_collect(*pending.popleft()))
            while pending:
                outputs.append(_collect(*pending.popleft()))
        finally:
            pipeline.shutdown()
    return outputs


@contextlib.contextmanager
def ray_session(num_cpus: int | None = None) -> Iterator[None]:
    """`ensure_ray` for the body, which a SIGTERM interrupts with KeyboardInterrupt (so its `finally`
    blocks stop actors); afterwards Ray is shut down if this started it, and the handler restored.

    Ray's core worker installs a SIGTERM handler of its own while connecting, one that aborts the
    process and leaves its raylet and workers running. So SIGTERM is blocked from before connecting
    until ours is set: a scheduler's SIGTERM in that window waits, then reaches ours (threads Ray
    starts meanwhile keep it blocked, so it always lands in the main thread). Off the main thread
    nothing is blocked or set: Python runs signal handlers in the main thread only."""
    import threading

    import ray

    main = threading.current_thread() is threading.main_thread()
    started, previous = False, None
    if main:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        started = ensure_ray(num_cpus)
        if main:

            def interrupt(signum, frame):
                raise KeyboardInterrupt(f"signal {signum}")

            previous = signal.signal(signal.SIGTERM, interrupt)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})  # one that came meanwhile raises here
        yield
    finally:
        if main:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        if started:
            ray.shutdown()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _collect(path: str, ref) -> FileOutput:
    import ray

    try:
        (output,) = ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, AudioError):  # raised by AudioStage, passed down the chain unchanged
            return FileOutput(path=path, output=None, error=str(cause))
        raise
    return FileOutput(path=path, output=output.with_audio(path=path))


# --- helpers ---------------------------------------------------------------------------------------


def ensure_ray(num_cpus: int | None = None) -> bool:
    """Join the cluster at RAY_ADDRESS (a RayJob or `ray start` user sets it), else start a private
    local Ray with `num_cpus` (default: every core) — never some other process's instance that
    happens to run on this machine. True when this call started or joined it (shut it down after)."""
    import os

    import ray

    if ray.is_initialized():
        return False
    if os.environ.get("RAY_ADDRESS"):
        ray.init()
    else:
        cpus = num_cpus or os.cpu_count() or 1
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    return True


def _set_threads() -> None:
    """One intra-op thread per fractional-CPU actor: four stages on a small box must not oversubscribe."""
    import os

    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1") or 1)))


def _actor_device() -> torch.device:
    import ray

    return torch.device("cuda") if ray.get_gpu_ids() else torch.device("cpu")


def _to_cpu(encoded: EncoderOutput) -> EncoderOutput:
    return _to_device(encoded, torch.device("cpu"))


def _to_device(encoded: EncoderOutput, device: torch.device) -> EncoderOutput:
    hidden = encoded.hidden_states.to(device) if encoded.hidden_states is not None else None
    return replace(
        encoded, features=encoded.features.to(device), lengths=encoded.lengths.to(device), hidden_states=hidden
    )


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1e3
