"""The two model deployments of the Serve app: `Encoder` (encoder + compressor + adapter) and `LLM`.

Each batches concurrent requests with `@serve.batch` (Ray Serve's dynamic batching): callers send
one recording / one request; the replica runs whatever arrived within `batch_wait_timeout_s`, up to
`max_batch_size`, as one forward pass. Both knobs come from the deployment's `user_config`
(serve/config.yaml), so `max_batch_size: 1` gives the unbatched deployment bench/serve_load.py
compares against. The stage functions are the library's (spokenlm/model.py), as in pipelines/stages.py.

Heavy imports (torch, spokenlm) happen inside the replicas; this module only imports ray.serve.
Not here: HTTP, validation and response formats (serve/app.py).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, AsyncIterator

from ray import serve

if TYPE_CHECKING:
    from torch import Tensor

    from spokenlm.lm import GenerationConfig
    from spokenlm.tasks import TaskRequest

DEFAULT_BATCH = {"max_batch_size": 16, "batch_wait_timeout_s": 0.05}


@dataclass(frozen=True)
class EncodedItem:
    """One recording after encoder, compressor and adapter: what the LLM deployment needs."""

    projected: Tensor  # (N, D_llm) adapter output, CPU
    transcript: str | None  # CTC transcript, where the compressor has a CTC head
    char_times: list[tuple[str, float, float]] | None  # CTC characters with their times (s)
    tokens_per_second: float
    duration_s: float
    timing_ms: dict[str, float]  # per stage, for the batch this item ran in
    batch_size: int


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


def _lengths(values: list[int]) -> "Tensor":
    import torch

    return torch.tensor(values, dtype=torch.long)


def _record(item: EncodedItem, request: TaskRequest, result, llm_timing: dict[str, float], batch_size: int) -> dict:
    """The CLI's `--json` record (spokenlm.cli.output_record) minus the path, plus batch sizes."""
    from spokenlm.cli import output_record
    from spokenlm.model import RunOutput

    output = RunOutput(
        request=request,
        result=result,
        transcript=item.transcript,
        tokens_per_second=item.tokens_per_second,
        timing_ms=item.timing_ms | llm_timing,
    )
    record = output_record("", output)
    del record["path"]
    record["duration_s"] = round(item.duration_s, 3)
    record["batch_size"] = {"encoder": item.batch_size, "llm": batch_size}
    return record


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
    async def encode(self, waves: list[Tensor]) -> list[EncodedItem]:
        # The forward pass runs in a thread so the next batch can gather while this one computes.
        return await asyncio.to_thread(self._encode, waves)

    def _encode(self, waves: list[Tensor]) -> list[EncodedItem]:
        import torch

        from spokenlm.audio import SAMPLE_RATE
        from spokenlm.model import encode_chunks, join_chunks

        with torch.inference_mode():
            t0 = time.perf_counter()
            batches = encode_chunks(self.encoder, waves, max_chunk_s=self.max_chunk_s)
            speech = join_chunks(self.compressor, batches, [w.shape[-1] / SAMPLE_RATE for w in waves])
            t1 = time.perf_counter()
            projected = self.adapter(speech.embeddings.to(self.device)).cpu()  # (B, N, D_llm)
            t2 = time.perf_counter()
        timing = {"encode_compress": (t1 - t0) * 1e3, "adapter": (t2 - t1) * 1e3}
        lengths = speech.lengths.tolist()
        return [
            EncodedItem(
                projected=projected[i, : lengths[i]].clone(),
                transcript=speech.transcripts[i] if speech.transcripts is not None else None,
                char_times=speech.char_times[i] if speech.char_times is not None else None,
                tokens_per_second=speech.tokens_per_second[i],
                duration_s=speech.durations_s[i],
                timing_ms=timing,
                batch_size=len(waves),
            )
            for i in range(len(waves))
        ]


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
        self, items: list[EncodedItem], requests: list[TaskRequest], generations: list[GenerationConfig]
    ) -> list[dict]:
        return await asyncio.to_thread(self._decode, items, requests, generations)

    def _decode(
        self, items: list[EncodedItem], requests: list[TaskRequest], generations: list[GenerationConfig]
    ) -> list[dict]:
        from torch.nn.utils.rnn import pad_sequence

        from spokenlm.model import decode_requests

        # One generate() per distinct GenerationConfig in the batch (they are frozen, hence hashable).
        groups: dict[GenerationConfig, list[int]] = {}
        for i, generation in enumerate(generations):
            groups.setdefault(generation, []).append(i)
        records: list[dict | None] = [None] * len(items)
        for generation, index in groups.items():
            t0 = time.perf_counter()
            projected = pad_sequence([items[i].projected for i in index], batch_first=True)  # (B, N, D)
            lengths = _lengths([items[i].projected.shape[0] for i in index])
            char_times = [items[i].char_times or [] for i in index]
            results = decode_requests(
                self.llm, [requests[i] for i in index], projected, lengths, generation,
                char_times=char_times if all(items[i].char_times is not None for i in index) else None,
                draft=self.draft,
            )  # fmt: skip
            llm_ms = (time.perf_counter() - t0) * 1e3
            for i, result in zip(index, results):
                records[i] = _record(items[i], requests[i], result, {"llm": llm_ms}, len(index))
        return records  # type: ignore[return-value]

    async def stream(
        self, item: EncodedItem, request: TaskRequest, generation: GenerationConfig
    ) -> AsyncIterator[dict]:
        """Token streaming for one request (not batched): {"delta": text} per token, then {"record": ...}."""
        import torch

        from spokenlm.lm import sample_next_token
        from spokenlm.model import request_prompts
        from spokenlm.tasks import Entities, parse_output

        t0 = time.perf_counter()
        llm = self.llm
        tokenizer = llm.tokenizer
        with torch.inference_mode():
            speech = item.projected[None].to(self.device)  # (1, N, D)
            prompts = request_prompts(llm, [request], None if item.char_times is None else [item.char_times])
            embeds, mask = llm.embed_prompts(prompts, speech, _lengths([speech.shape[1]]).to(self.device))
            logits, state = llm.prefill(embeds, mask)
        generator = None
        if generation.strategy == "sample" and generation.seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(generation.seed)
        ids: list[int] = []
        text = ""
        for step in range(generation.max_new_tokens):
            with torch.inference_mode():
                if generation.strategy == "sample":
                    next_id = sample_next_token(logits, generation, generator)
                else:  # greedy (beam search cannot stream: its best prefix changes)
                    next_id = logits.argmax(dim=-1)
            token = int(next_id[0])
            if token in llm.eos_token_ids:
                break
            ids.append(token)
            new_text = tokenizer.decode(ids, skip_special_tokens=True)
            if new_text != text and not new_text.endswith("\ufffd"):  # hold back half a UTF-8 char
                yield {"delta": new_text[len(text) :] if new_text.startswith(text) else new_text}
                text = new_text
            if step == generation.max_new_tokens - 1:
                break
            with torch.inference_mode():
                step_logits, state = llm.decode_step(next_id[:, None], state)
            logits = step_logits[:, -1]
            await asyncio.sleep(0)  # let the replica serve other calls between tokens
        full = tokenizer.decode(ids, skip_special_tokens=True)
        result = parse_output(request, full)
        if isinstance(result, Entities) and item.char_times is not None:
            from spokenlm.model import locate_entities

            result = locate_entities(result, item.char_times)
        yield {"record": _record(item, request, result, {"llm": (time.perf_counter() - t0) * 1e3}, 1)}
