"""The two model deployments of the Serve app: `Encoder` (encoder + compressor + adapter) and `LLM`.

Each batches concurrent requests with `@serve.batch` (Ray Serve's dynamic batching): callers send
one recording / one request; the replica runs whatever arrived within `batch_wait_timeout_s`, up to
`max_batch_size`, as one forward pass. Both knobs come from the deployment's `user_config`
(serve/config.yaml), so `max_batch_size: 1` gives the unbatched deployment bench/serve_load.py
compares against. The two halves of the forward pass are the library's, the ones `SpeechLM.run` and
`SpeechLM.stream` are made of: `spokenlm.speech.encode_speech` here gives each recording's
`SpeechTokens`, `spokenlm.model.decode_speech` / `stream_speech` there give `RunOutput`s (the
stream: text as it is decoded, with the bundle's draft model where it has one).

Long recordings (over LONG_AUDIO_S) take the unbatched `encode_long` / `decode_long`: a 3-s clip never
waits in one padded batch with a 10-min one (the ingress bounds how much long audio runs at once).

Every call carries a deadline (a wall-clock time) and stops when its caller cancels it (a client that
disconnects, an ingress that gave up): the replica hooks each transformer block of its models
(`_stoppable`), and a forward pass raises `WorkStopped` at the next block once every request of the
running batch is due. Hooks, not a check between decoding steps: the longest stretches are single
forward passes with no steps to check between, the encoder's over a long recording and the LLM's
prefill over its speech tokens (the CTC compressor gives about one per character, ~12 per second of
speech: 10 min is ~7,000 positions; 2,000 took 8 s on one CPU thread for a SmolLM2-135M-shaped LLM,
a decoding step 0.07 s). `check_health` fails when work has run past `stuck_after_s` (a forward pass
that never returns), so Serve replaces the replica, and `ready` says so to /readyz.

Heavy imports (torch, spokenlm) happen inside the replicas; this module only imports ray.serve.
Not here: HTTP, validation and response formats (serve/app.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from typing import TYPE_CHECKING, Any, AsyncIterator, Iterator

from ray import serve

if TYPE_CHECKING:
    from torch import Tensor

    from spokenlm.lm import GenerationConfig
    from spokenlm.output import RunOutput
    from spokenlm.speech import SpeechTokens
    from spokenlm.tasks import TaskRequest

DEFAULT_BATCH = {"max_batch_size": 16, "batch_wait_timeout_s": 0.05}
LONG_AUDIO_S = 30.0  # recordings longer than one encoder window are encoded and decoded alone
STUCK_AFTER_S = 120.0  # default: work running longer than this fails the replica's health check


class WorkStopped(Exception):
    """The work was stopped: every request it served was cancelled or past its deadline."""


class _Stop:
    """One request's deadline (time.time()) and whether its caller cancelled it."""

    def __init__(self, deadline: float):
        self.deadline, self.cancelled = deadline, False

    def due(self) -> bool:
        return self.cancelled or time.time() > self.deadline


_running = threading.local()  # .stops: the _Stops of the work the current thread runs


def _check_stop(module: Any, args: Any) -> None:
    """Forward pre-hook of every transformer block: stop once every request of this thread's work is due."""
    stops = getattr(_running, "stops", None)
    if stops and all(stop.due() for stop in stops):
        raise WorkStopped(f"stopped: {len(stops)} request(s) cancelled or past their deadline")


def _stoppable(model: Any) -> None:
    """Hook `_check_stop` onto the blocks of every nn.ModuleList in `model` (its layer stacks)."""
    from torch import nn

    for module in model.modules():
        if isinstance(module, nn.ModuleList):
            for block in module:
                block.register_forward_pre_hook(_check_stop)


class _Work:
    """What runs in the replica's threads and since when: `running` sets the stops the hooks read;
    `stuck` names work that has run past `stuck_after_s`."""

    def __init__(self, stuck_after_s: float, clock=time.monotonic):
        self.stuck_after_s, self.clock = stuck_after_s, clock
        self.started: dict[object, float] = {}
        self.stopped = {"cancelled": 0, "deadline": 0}  # work stopped early, by why (a deadline passed, else cancelled)

    @contextlib.contextmanager
    def running(self, stops: list[_Stop]) -> Iterator[None]:
        token = object()
        self.started[token] = self.clock()
        _running.stops = stops
        try:
            yield
        except WorkStopped:
            # At the deadline the ingress cancels its call too: a passed deadline names the stop.
            self.stopped["deadline" if any(time.time() > stop.deadline for stop in stops) else "cancelled"] += 1
            raise
        finally:
            _running.stops = None
            del self.started[token]

    def stuck(self) -> str | None:
        if not self.started:
            return None
        age = self.clock() - min(self.started.values())
        return f"work has run {age:.0f} s, over the {self.stuck_after_s:g} s limit" if age > self.stuck_after_s else None


class _Replica:
    """What both deployments answer about their `work` (a _Work): Serve's health check and the
    ingress's readiness and stats."""

    work: _Work

    def ready(self) -> str | None:
        """None when ready, else why not (the ingress's /readyz reports it)."""
        return self.work.stuck()

    def check_health(self) -> None:
        if reason := self.work.stuck():
            raise RuntimeError(reason)

    def stats(self) -> dict:
        """Work running now, work stopped early by why, and torch's threads: what tests and operators look at."""
        import torch

        return {"running": len(self.work.started), "stopped": dict(self.work.stopped), "threads": torch.get_num_threads()}


async def _until_cancelled(stop: _Stop, call):
    """Await `call` (a coroutine); when the caller is cancelled, mark `stop` so the work stops too."""
    try:
        return await call
    except asyncio.CancelledError:
        stop.cancelled = True
        raise


def _configure_batching(replica: Any, method_names: tuple[str, ...], config: dict) -> None:
    unknown = set(config) - set(DEFAULT_BATCH)
    if unknown:
        raise ValueError(f"unknown user_config keys {sorted(unknown)}; expected {sorted(DEFAULT_BATCH)}")
    size = int(config.get("max_batch_size", DEFAULT_BATCH["max_batch_size"]))
    wait = float(config.get("batch_wait_timeout_s", DEFAULT_BATCH["batch_wait_timeout_s"]))
    if size < 1 or wait < 0:
        raise ValueError(f"max_batch_size must be >= 1 and batch_wait_timeout_s >= 0, got {size}, {wait}")
    for name in method_names:
        getattr(replica, name).set_max_batch_size(size)
        getattr(replica, name).set_batch_wait_timeout_s(wait)


def _init_torch(threads: int | None) -> "Any":
    """The replica's device, with torch's intra-op threads set: `threads`, else OMP_NUM_THREADS (Ray sets
    it from the replica's num_cpus: fractional-CPU replicas on a small box must not each spawn one
    thread per core unless told to)."""
    import os

    import ray
    import torch

    torch.set_num_threads(threads or max(1, int(os.environ.get("OMP_NUM_THREADS", "1") or 1)))
    # outside a Ray worker (a test, a debugger) get_gpu_ids would start a Ray of its own: no GPUs there
    return torch.device("cuda") if ray.is_initialized() and ray.get_gpu_ids() else torch.device("cpu")


@serve.deployment(
    max_ongoing_requests=64,  # >= max_batch_size, else batches never fill
    ray_actor_options={"num_cpus": 0.25, "num_gpus": 0},
    user_config=DEFAULT_BATCH,
)
class Encoder(_Replica):
    def __init__(self, model_dir: str, stuck_after_s: float = STUCK_AFTER_S, threads: int | None = None):
        from spokenlm.model import load_bundle_compressor, load_bundle_encoder, load_bundle_transcriber

        self.device = _init_torch(threads)
        encoder, self.max_chunk_s = load_bundle_encoder(model_dir)
        compressor, adapter = load_bundle_compressor(model_dir)
        # Whisper's reading for the prompt, if the bundle has one; CTranslate2 takes `threads` too
        self.transcriber = load_bundle_transcriber(model_dir, cpu_threads=threads)
        self.encoder = encoder.to(self.device)
        self.compressor, self.adapter = compressor.to(self.device), adapter.to(self.device)
        _stoppable(self.encoder)
        self.work = _Work(stuck_after_s)

    def reconfigure(self, config: dict) -> None:
        _configure_batching(self, ("_encode_batched",), config)

    async def encode(self, wav: Tensor, deadline: float) -> tuple[SpeechTokens, int]:
        """One recording of at most LONG_AUDIO_S, batched with others: its SpeechTokens (B = 1, CPU)
        and the size of the batch it was encoded in."""
        stop = _Stop(deadline)
        return await _until_cancelled(stop, self._encode_batched(wav, stop))

    async def encode_long(self, wav: Tensor, deadline: float) -> tuple[SpeechTokens, int]:
        """One long recording, alone."""
        stop = _Stop(deadline)
        (out,) = await _until_cancelled(stop, asyncio.to_thread(self._encode, [wav], [stop]))
        return out

    @serve.batch(max_batch_size=DEFAULT_BATCH["max_batch_size"], batch_wait_timeout_s=DEFAULT_BATCH["batch_wait_timeout_s"])
    async def _encode_batched(self, waves: list[Tensor], stops: list[_Stop]) -> list[tuple[SpeechTokens, int]]:
        # The forward pass runs in a thread so the next batch can gather while this one computes.
        return await asyncio.to_thread(self._encode, waves, stops)

    def _encode(self, waves: list[Tensor], stops: list[_Stop]) -> list[tuple[SpeechTokens, int]]:
        from spokenlm.speech import encode_speech

        with self.work.running(stops):
            speech = encode_speech(self.encoder, self.compressor, self.adapter, waves, max_chunk_s=self.max_chunk_s,
                                   transcriber=self.transcriber)  # fmt: skip
        return [(speech.item(i), len(waves)) for i in range(len(waves))]


@serve.deployment(
    max_ongoing_requests=64,
    ray_actor_options={"num_cpus": 0.25, "num_gpus": 0},
    user_config=DEFAULT_BATCH,
)
class LLM(_Replica):
    def __init__(self, model_dir: str, stuck_after_s: float = STUCK_AFTER_S, threads: int | None = None):
        from spokenlm.model import load_bundle_draft, load_bundle_llm

        self.device = _init_torch(threads)
        self.llm = load_bundle_llm(model_dir).to(self.device)
        draft = load_bundle_draft(model_dir)  # speculative decoding of batched requests, when the bundle has one
        self.draft = None if draft is None else draft.to(self.device)
        _stoppable(self.llm)
        self.work = _Work(stuck_after_s)

    def reconfigure(self, config: dict) -> None:
        _configure_batching(self, ("_decode_batched",), config)

    async def decode(
        self, item: tuple[SpeechTokens, int], request: TaskRequest, generation: GenerationConfig, deadline: float
    ) -> tuple[RunOutput, dict[str, int]]:
        """One request, batched with others: its RunOutput and the batch sizes it ran in ({"encoder", "llm"})."""
        stop = _Stop(deadline)
        return await _until_cancelled(stop, self._decode_batched(item, request, generation, stop))

    async def decode_long(
        self, item: tuple[SpeechTokens, int], request: TaskRequest, generation: GenerationConfig, deadline: float
    ) -> tuple[RunOutput, dict[str, int]]:
        """One request on a long recording, alone."""
        stop = _Stop(deadline)
        call = asyncio.to_thread(self._decode, [item], [request], [generation], [stop])
        (answer,) = await _until_cancelled(stop, call)
        return answer

    @serve.batch(max_batch_size=DEFAULT_BATCH["max_batch_size"], batch_wait_timeout_s=DEFAULT_BATCH["batch_wait_timeout_s"])
    async def _decode_batched(
        self, items: list[tuple[SpeechTokens, int]], requests: list[TaskRequest], generations: list[GenerationConfig],
        stops: list[_Stop],
    ) -> list[tuple[RunOutput, dict[str, int]]]:  # fmt: skip
        return await asyncio.to_thread(self._decode, items, requests, generations, stops)

    def _decode(
        self, items: list[tuple[SpeechTokens, int]], requests: list[TaskRequest], generations: list[GenerationConfig],
        stops: list[_Stop],
    ) -> list[tuple[RunOutput, dict[str, int]]]:  # fmt: skip
        from spokenlm.model import decode_speech
        from spokenlm.speech import SpeechTokens

        # One decode per distinct GenerationConfig in the batch (they are frozen, hence hashable).
        groups: dict[GenerationConfig, list[int]] = {}
        for i, generation in enumerate(generations):
            groups.setdefault(generation, []).append(i)
        answers: list[tuple[RunOutput, dict[str, int]] | None] = [None] * len(items)
        for generation, index in groups.items():
            speech = SpeechTokens.batch([items[i][0] for i in index])
            with self.work.running([stops[i] for i in index]):
                outputs = decode_speech(self.llm, speech, [requests[i] for i in index], generation, draft=self.draft)
            for i, output in zip(index, outputs):
                answers[i] = (output, {"encoder": items[i][1], "llm": len(index)})
        return answers  # type: ignore[return-value]

    async def stream(
        self, item: tuple[SpeechTokens, int], request: TaskRequest, generation: GenerationConfig, deadline: float
    ) -> AsyncIterator[str | tuple[RunOutput, dict[str, int]]]:
        """One request (not batched), as it is decoded: text deltas, then (RunOutput, batch sizes)."""
        from spokenlm.model import stream_speech

        stop = _Stop(deadline)
        events = stream_speech(self.llm, item[0], request, generation, draft=self.draft)

        def step():
            with self.work.running([stop]):
                return next(events, None)

        # Other calls run between steps; a cancelled stream (the client left) takes no further step.
        while (event := await _until_cancelled(stop, asyncio.to_thread(step))) is not None:
            yield event if isinstance(event, str) else (event, {"encoder": item[1], "llm": 1})
