"""The two model deployments of the Serve app: `Encoder` (encoder + compressor + adapter) and `LLM`.

Each batches concurrent requests with `@serve.batch` (Ray Serve's dynamic batching): callers send
one recording / one request; the replica runs whatever arrived within `batch_wait_timeout_s`, up to
`max_batch_size`, as one forward pass. Both knobs come from the deployment's `user_config`
(serve/config.yaml), so `max_batch_size: 1` gives the unbatched deployment bench/serve_load.py
compares against. The two halves of the forward pass are the library's, the ones `SpeechLM.run` and
`SpeechLM.stream` are made of: `spokenlm.speech.encode_speech` here gives each recording's
`SpeechTokens`, `spokenlm.model.decode_speech` / `stream_speech` there give `RunOutput`s (the
stream: text as it is decoded, with the bundle's draft model where it has one).

Heavy imports (torch, spokenlm) happen inside the replicas; this module only imports ray.serve.
Not here: HTTP, validation and response formats (serve/app.py).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, AsyncIterator

from ray import serve

if TYPE_CHECKING:
    from torch import Tensor

    from spokenlm.lm import GenerationConfig
    from spokenlm.output import RunOutput
    from spokenlm.speech import SpeechTokens
    from spokenlm.tasks import TaskRequest

DEFAULT_BATCH = {"max_batch_size": 16, "batch_wait_timeout_s": 0.05}


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


def _init_torch() -> "Any":
    import os

    import ray
    import torch

    # Fractional-CPU replicas on a small box must not each spawn one thread per core.
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1") or 1)))
    return torch.device("cuda") if ray.get_gpu_ids() else torch.device("cpu")


@serve.deployment(
    max_ongoing_requests=64,  # >= max_batch_size, else batches never fill
    ray_actor_options={"num_cpus": 0.25, "num_gpus": 0},
    user_config=DEFAULT_BATCH,
)
class Encoder:
    def __init__(self, model_dir: str):
        from spokenlm.model import load_bundle_compressor, load_bundle_encoder

        self.device = _init_torch()
        encoder, self.max_chunk_s = load_bundle_encoder(model_dir)
        compressor, adapter = load_bundle_compressor(model_dir)
        self.encoder = encoder.to(self.device)
        self.compressor, self.adapter = compressor.to(self.device), adapter.to(self.device)

    def reconfigure(self, config: dict) -> None:
        _configure_batching(self, ("encode",), config)

    def ready(self) -> bool:
        return True

    @serve.batch(max_batch_size=DEFAULT_BATCH["max_batch_size"], batch_wait_timeout_s=DEFAULT_BATCH["batch_wait_timeout_s"])
    async def encode(self, waves: list[Tensor]) -> list[tuple[SpeechTokens, int]]:
        """Per recording: its SpeechTokens (B = 1, CPU) and the size of the batch it was encoded in."""
        # The forward pass runs in a thread so the next batch can gather while this one computes.
        return await asyncio.to_thread(self._encode, waves)

    def _encode(self, waves: list[Tensor]) -> list[tuple[SpeechTokens, int]]:
        from spokenlm.speech import encode_speech

        speech = encode_speech(self.encoder, self.compressor, self.adapter, waves, max_chunk_s=self.max_chunk_s)
        return [(speech.item(i), len(waves)) for i in range(len(waves))]


@serve.deployment(
    max_ongoing_requests=64,
    ray_actor_options={"num_cpus": 0.25, "num_gpus": 0},
    user_config=DEFAULT_BATCH,
)
class LLM:
    def __init__(self, model_dir: str):
        from spokenlm.model import load_bundle_draft, load_bundle_llm

        self.device = _init_torch()
        self.llm = load_bundle_llm(model_dir).to(self.device)
        draft = load_bundle_draft(model_dir)  # speculative decoding of batched requests, when the bundle has one
        self.draft = None if draft is None else draft.to(self.device)

    def reconfigure(self, config: dict) -> None:
        _configure_batching(self, ("decode",), config)

    def ready(self) -> bool:
        return True

    @serve.batch(max_batch_size=DEFAULT_BATCH["max_batch_size"], batch_wait_timeout_s=DEFAULT_BATCH["batch_wait_timeout_s"])
    async def decode(
        self, items: list[tuple[SpeechTokens, int]], requests: list[TaskRequest], generations: list[GenerationConfig]
    ) -> list[tuple[RunOutput, dict[str, int]]]:
        """Per request: its RunOutput and the batch sizes it ran in ({"encoder", "llm"})."""
        return await asyncio.to_thread(self._decode, items, requests, generations)

    def _decode(
        self, items: list[tuple[SpeechTokens, int]], requests: list[TaskRequest], generations: list[GenerationConfig]
    ) -> list[tuple[RunOutput, dict[str, int]]]:
        from spokenlm.model import decode_speech
        from spokenlm.speech import SpeechTokens

        # One decode per distinct GenerationConfig in the batch (they are frozen, hence hashable).
        groups: dict[GenerationConfig, list[int]] = {}
        for i, generation in enumerate(generations):
            groups.setdefault(generation, []).append(i)
        answers: list[tuple[RunOutput, dict[str, int]] | None] = [None] * len(items)
        for generation, index in groups.items():
            speech = SpeechTokens.batch([items[i][0] for i in index])
            outputs = decode_speech(self.llm, speech, [requests[i] for i in index], generation, draft=self.draft)
            for i, output in zip(index, outputs):
                answers[i] = (output, {"encoder": items[i][1], "llm": len(index)})
        return answers  # type: ignore[return-value]

    async def stream(
        self, item: tuple[SpeechTokens, int], request: TaskRequest, generation: GenerationConfig
    ) -> AsyncIterator[str | tuple[RunOutput, dict[str, int]]]:
        """One request (not batched), as it is decoded: text deltas, then (RunOutput, batch sizes)."""
        from spokenlm.model import stream_speech

        events = stream_speech(self.llm, item[0], request, generation, draft=self.draft)
        while (event := await asyncio.to_thread(next, events, None)) is not None:  # other calls run in between
            yield event if isinstance(event, str) else (event, {"encoder": item[1], "llm": 1})
