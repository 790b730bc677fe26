"""The base-size graph, our serving path against a naive cascade of the same modules (issue #7 "graph").

Measures the real-time factor (RTF = wall seconds / audio seconds; lower is better) and the peak
memory of one ASR request ("<audio> Transcribe the speech.") on each of N synthetic clips, two ways:

- naive cascade: one clip at a time (batch 1); every 50 Hz encoder frame goes through the adapter into
  the LLM (a 10 s clip is a ~510-token prompt); fp32 throughout.
- ours: all clips in one batch (they are equally long, so no length sorting is needed); the speech is
  compressed to 12.5 tokens/s before the adapter (a ~135-token prompt); the LLM runs in the fastest
  of fp32, bf16 autocast and bf16 weights, chosen by a pre-check that times a prefill and two decode
  steps of our batch under each, and prints them. On CUDA the LLM runs in bf16 without a pre-check.
  The encoder stays fp32 in both paths.

Both paths keep the KV cache and decode exactly --new-tokens greedy tokens per clip, eos or not:
with random weights eos comes at random, so a fixed count gives both the same decoding work, and the
ratio isolates what the issue asks about: compression, batching and dtype.

The modules are base-sized with random weights (speed does not depend on the values): a
wav2vec2-base-shaped encoder (94M), and a Qwen2.5-0.5B-shaped decoder (494M with its tied
151,936-token vocabulary, so the vocabulary projection costs what it really costs) over a small BPE
tokenizer. The compressor is the fixed-rate one (4 frames stacked into a token, 12.5 tokens/s), a
stand-in for a trained CTC compressor at its rate: a character CTC head emits ~12-15 characters per
second of English speech. A random CTC head cannot stand in: its blank decisions shift from clip to
clip (a blank bias set for 12.5 tokens/s on one clip gave the other clips 21.5 on average), and the
LLM's cost follows the token count, not what selected the tokens. Stacked frames are 4 x 768 wide,
so our adapter's first layer is wider than the naive one's; the rest of the modules are the same.

Each path runs in its own child process (``--path naive|ours``; the pre-check is ``--path dtype``)
that builds the modules, warms up on two 1 s clips, then times the workload. Peak memory is the
child's ``ru_maxrss`` (everything it ever held: weights, activations, the KV cache); on CUDA,
``torch.cuda.max_memory_allocated``. The last line:

    bench graph: clips=8 seconds=10 naive_rtf=... ours_rtf=... naive_rss_mb=... ours_rss_mb=... dtype=... ratio=<naive_rtf/ours_rtf>

(on CUDA ``naive_gpu_mb`` / ``ours_gpu_mb`` in place of the RSS keys).

    python bench/graph.py [--clips 8] [--seconds 10] [--new-tokens 30] [--size base|tiny] [--device cpu|cuda]

The parent imports no torch: ``ru_maxrss`` survives ``exec``, so a child reports at least its
parent's peak, and a parent holding torch would add it to both paths.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn

    from spokenlm.lm import SpeechLLM

STACK_K = 4  # 50 Hz frames -> 12.5 tokens/s, the rate of a trained character CTC head (see above)
LLM_DTYPES = ("fp32", "bf16-autocast", "bf16")  # bf16: the weights themselves are bf16
CHECK_STEPS = 2  # decode steps the dtype pre-check times per candidate
WARMUP_S = 1.0
MAX_CHUNK_S = 30.0  # SpeechLM's default; the clips here are never cut


def qwen25_05b() -> dict[str, Any]:
    """Qwen2.5-0.5B's architecture, as in its config.json: 24 layers of width 896, 14 query and 2
    key-value heads, a tied 151,936-token vocabulary; 494M parameters."""
    return {
        "model_type": "qwen2",
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "vocab_size": 151936,
        "max_position_embeddings": 32768,
        "rope_theta": 1_000_000.0,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": True,
    }


def tiny_qwen2() -> dict[str, Any]:
    """A ~140K-parameter Qwen2 for tests: the graph's code paths, none of its cost."""
    return qwen25_05b() | {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 1024,
        "max_position_embeddings": 4096,
    }


# --------------------------------------------------------------------------------------------------
# The graph and its workload (child processes only)


@dataclass(frozen=True)
class Graph:
    encoder: nn.Module
    compressor: nn.Module
    adapter: nn.Module
    llm: SpeechLLM
    device: torch.device


def build_graph(size: str, llm_dtype: str, device: torch.device, *, compress: bool) -> Graph:
    """Random-weight encoder, compressor (the adapter reads frames when compress is False), adapter
    and LLM (bf16 weights when llm_dtype is "bf16")."""
    import torch

    from spokenlm.adapter import AdapterConfig, build_adapter
    from spokenlm.compress import StackCompressorConfig, build_compressor
    from spokenlm.encoders import build_encoder
    from spokenlm.encoders.wav2vec2 import wav2vec2_base, wav2vec2_tiny

    torch.manual_seed(0)
    encoder = build_encoder(wav2vec2_base() if size == "base" else wav2vec2_tiny())
    compressor = build_compressor(StackCompressorConfig(input_dim=encoder.output_dim, k=STACK_K))
    llm = build_speech_llm(size, llm_dtype)
    adapter = build_adapter(
        AdapterConfig(
            input_dim=compressor.output_dim if compress else encoder.output_dim,
            output_dim=llm.model_dim,
            hidden_dim=2048 if size == "base" else 64,
        )
    )
    encoder, compressor, adapter, llm = (m.eval().to(device) for m in (encoder, compressor, adapter, llm))
    return Graph(encoder=encoder, compressor=compressor, adapter=adapter, llm=llm, device=device)


def build_speech_llm(size: str, llm_dtype: str) -> SpeechLLM:
    """The random-weight decoder over a small BPE tokenizer (bf16 weights when llm_dtype is "bf16")."""
    from spokenlm.lm import build_llm
    from spokenlm.tasks import TASKS
    from spokenlm.tokenizer import train_bpe_tokenizer

    tokenizer = train_bpe_tokenizer([spec.instruction for spec in TASKS.values()] * 4, vocab_size=400)
    arch = qwen25_05b() if size == "base" else tiny_qwen2()
    return build_llm(arch | {"dtype": "bfloat16" if llm_dtype == "bf16" else "float32"}, tokenizer)


def synthetic_clips(n: int, seconds: float, *, seed: int) -> list[Tensor]:
    """n clips (S,) of noise under a 4 Hz half-wave envelope: speech-like loudness and pauses, no
    content; a random encoder cannot tell it from speech, and its cost does not depend on content."""
    import math

    import torch

    from spokenlm.audio import SAMPLE_RATE

    g = torch.Generator().manual_seed(seed)
    samples = int(seconds * SAMPLE_RATE)
    t = torch.arange(samples) / SAMPLE_RATE
    clips = []
    for _ in range(n):
        phase = float(torch.rand((), generator=g)) * 2 * math.pi
        envelope = torch.sin(2 * math.pi * 4.0 * t + phase).clamp(min=0)
        clips.append(0.1 * envelope * torch.randn(samples, generator=g))
    return clips


def decode_fixed(llm: SpeechLLM, inputs_embeds: Tensor, attention_mask: Tensor, new_tokens: int) -> Tensor:
    """(B, new_tokens) greedy ids with the KV cache: one prefill, then new_tokens - 1 decode steps,
    whatever the tokens are (eos included)."""
    import torch

    logits, state = llm.prefill(inputs_embeds, attention_mask)  # (B, V)
    tokens = [logits.argmax(dim=-1)]
    for _ in range(new_tokens - 1):
        step_logits, state = llm.decode_step(tokens[-1][:, None], state)
        tokens.append(step_logits[:, -1].argmax(dim=-1))
    return torch.stack(tokens, dim=1)


@dataclass(frozen=True)
class PathRun:
    encode_s: float  # encoder (and compressor), all clips
    llm_s: float  # adapter, prompt assembly, prefill and decoding, all clips
    wall_s: float
    speech_tokens: list[int]  # per clip, fed to the LLM
    prompt_tokens: list[int]  # per clip, speech included
    new_tokens: list[int]  # per clip, generated


def _clock(device: torch.device) -> float:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()  # CUDA runs asynchronously; time what has finished
    return time.perf_counter()


def run_naive(graph: Graph, clips: list[Tensor], new_tokens: int, *, prompt: str) -> PathRun:
    """One clip at a time; every encoder frame becomes an LLM token; fp32."""
    import torch

    encode_s = llm_s = 0.0
    speech, prompts, generated = [], [], []
    start = _clock(graph.device)
    for wav in clips:
        t0 = _clock(graph.device)
        wav = wav.to(graph.device)
        encoded = graph.encoder(wav[None], torch.tensor([wav.shape[0]], device=graph.device))  # (1, T, D_enc)
        t1 = _clock(graph.device)
        embeds, mask = graph.llm.embed_prompts([prompt], graph.adapter(encoded.features), encoded.lengths)
        tokens = decode_fixed(graph.llm, embeds, mask, new_tokens).cpu()
        t2 = _clock(graph.device)
        encode_s, llm_s = encode_s + t1 - t0, llm_s + t2 - t1
        speech.append(int(encoded.lengths[0]))
        prompts.append(int(mask.sum()))
        generated.append(tokens.shape[1])
    wall_s = _clock(graph.device) - start
    return PathRun(encode_s, llm_s, wall_s, speech, prompts, generated)


def run_ours(graph: Graph, clips: list[Tensor], new_tokens: int, *, prompt: str, llm_dtype: str) -> PathRun:
    """All clips in one batch, compressed, the LLM in llm_dtype."""
    from spokenlm.audio import SAMPLE_RATE
    from spokenlm.model import encode_chunks, join_chunks

    start = _clock(graph.device)
    batches = encode_chunks(graph.encoder, clips, max_chunk_s=MAX_CHUNK_S, max_chunks_per_batch=len(clips))
    speech = join_chunks(graph.compressor, batches, [wav.shape[0] / SAMPLE_RATE for wav in clips])
    t1 = _clock(graph.device)
    projected = graph.adapter(speech.embeddings.to(graph.device))  # (B, N, D_llm)
    with _llm_context(llm_dtype, graph.device):
        embeds, mask = graph.llm.embed_prompts([prompt] * len(clips), projected, speech.lengths.to(graph.device))
        tokens = decode_fixed(graph.llm, embeds, mask, new_tokens).cpu()
    t2 = _clock(graph.device)
    return PathRun(
        encode_s=t1 - start,
        llm_s=t2 - t1,
        wall_s=t2 - start,
        speech_tokens=speech.lengths.tolist(),
        prompt_tokens=mask.sum(dim=1).tolist(),
        new_tokens=[tokens.shape[1]] * tokens.shape[0],
    )


def _llm_context(llm_dtype: str, device: torch.device) -> AbstractContextManager:
    import torch

    return torch.autocast(device.type, dtype=torch.bfloat16) if llm_dtype == "bf16-autocast" else nullcontext()


def check_dtypes(size: str, clips: int, seconds: float, new_tokens: int, device: torch.device) -> dict[str, dict]:
    """Per candidate LLM dtype: a prefill of our path's batch (random speech, as many tokens as the
    compressor makes) and the mean of CHECK_STEPS decode steps, and the LLM time they predict for
    new_tokens tokens."""
    import math

    import torch

    from spokenlm.encoders.wav2vec2 import wav2vec2_base
    from spokenlm.tasks import TaskRequest, build_prompt

    torch.manual_seed(0)
    llm = build_speech_llm(size, "fp32").eval().to(device)
    prompt = build_prompt(TaskRequest(task="asr"))
    n = math.ceil(seconds * wav2vec2_base().frame_rate_hz / STACK_K)
    speech = torch.randn(clips, n, llm.model_dim, device=device)
    lengths = torch.full((clips,), n, device=device)
    times = {}
    for name in LLM_DTYPES:  # bf16 last: converting the weights is one way
        if name == "bf16":
            llm.model.to(torch.bfloat16)
        with _llm_context(name, device):
            warm_embeds, warm_mask = llm.embed_prompts([prompt], speech[:1, :4], lengths[:1].clamp(max=4))
            decode_fixed(llm, warm_embeds, warm_mask, 2)
            embeds, mask = llm.embed_prompts([prompt] * clips, speech, lengths)
            t0 = _clock(device)
            logits, state = llm.prefill(embeds, mask)
            t1 = _clock(device)
            for _ in range(CHECK_STEPS):
                step_logits, state = llm.decode_step(logits.argmax(dim=-1)[:, None], state)
                logits = step_logits[:, -1]
            t2 = _clock(device)
        step_s = (t2 - t1) / CHECK_STEPS
        times[name] = {"prefill_s": t1 - t0, "step_s": step_s, "llm_s": t1 - t0 + (new_tokens - 1) * step_s}
    return times


def child(args: argparse.Namespace) -> dict:
    """One child process: the dtype pre-check, or one path, timed after a warm-up. A JSON-able dict."""
    import torch

    from spokenlm.audio import SAMPLE_RATE
    from spokenlm.tasks import TaskRequest, build_prompt

    torch.set_num_threads(os.cpu_count() or 1)
    device = torch.device(args.device)
    with torch.inference_mode():
        if args.path == "dtype":
            return check_dtypes(args.size, args.clips, args.seconds, args.new_tokens, device)
        graph = build_graph(args.size, args.llm_dtype, device, compress=args.path == "ours")
        prompt = build_prompt(TaskRequest(task="asr"))
        clips = synthetic_clips(args.clips, args.seconds, seed=0)
        if args.path == "naive":
            run = partial(run_naive, graph, prompt=prompt)
        else:
            run = partial(run_ours, graph, prompt=prompt, llm_dtype=args.llm_dtype)
        run([wav[: int(WARMUP_S * SAMPLE_RATE)] for wav in clips[:2]], 2)  # first calls pay for kernel selection and allocator growth
        result = run(clips, args.new_tokens)
    if device.type == "cuda":
        memory_mb = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        memory_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    audio_s = args.clips * args.seconds
    return asdict(result) | {"rtf": result.wall_s / audio_s, "memory_mb": memory_mb, "llm_dtype": args.llm_dtype}


# --------------------------------------------------------------------------------------------------
# The parent: runs the children and reports


def run_child(path: str, args: argparse.Namespace, llm_dtype: str) -> dict:
    command = [
        sys.executable, __file__, "--path", path, "--llm-dtype", llm_dtype, "--clips", str(args.clips),
        "--seconds", str(args.seconds), "--new-tokens", str(args.new_tokens), "--size", args.size,
        "--device", args.device,
    ]  # fmt: skip
    print(f"running {path} ...", flush=True)
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clips", type=int, default=8)
    p.add_argument("--seconds", type=float, default=10.0, help="length of every clip")
    p.add_argument("--new-tokens", type=int, default=30, help="greedy tokens decoded per clip, exactly")
    p.add_argument("--size", choices=("base", "tiny"), default="base", help="tiny: a few-M-parameter graph for tests")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--path", choices=("naive", "ours", "dtype"), help=argparse.SUPPRESS)  # a child's job
    p.add_argument("--llm-dtype", choices=LLM_DTYPES, default="fp32", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.clips < 1 or args.new_tokens < 1:
        p.error(f"--clips and --new-tokens must be >= 1, got {args.clips} and {args.new_tokens}")
    if args.seconds < WARMUP_S:
        p.error(f"--seconds must be >= {WARMUP_S:g} (the warm-up clips are that long), got {args.seconds:g}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.path:
        print(json.dumps(child(args)))
        return 0

    if args.device == "cpu":
        check = run_child("dtype", args, "fp32")
        print(f"LLM dtype pre-check, our batch of {args.clips}:")
        for name, t in check.items():
            print(f"  {name:<14} prefill {t['prefill_s']:6.2f} s  decode step {t['step_s']:5.2f} s  "
                  f"-> LLM {t['llm_s']:6.2f} s for {args.new_tokens} tokens")  # fmt: skip
        dtype = min(check, key=lambda name: check[name]["llm_s"])
    else:
        dtype = "bf16"
    runs = {"naive": run_child("naive", args, "fp32"), "ours": run_child("ours", args, dtype)}
    if runs["naive"]["new_tokens"] != runs["ours"]["new_tokens"]:
        raise SystemExit(f"the paths decoded different token counts: {runs['naive']['new_tokens']} vs {runs['ours']['new_tokens']}")

    memory = "gpu_mb" if args.device == "cuda" else "rss_mb"
    audio_s = args.clips * args.seconds
    print(f"{'path':<6} {'llm dtype':<14} {'speech tok/s':>12} {'prompt tok':>10} {'new tok/clip':>12} "
          f"{'encode s':>9} {'llm s':>8} {'wall s':>8} {'RTF':>7} {'peak ' + memory:>12}")  # fmt: skip
    for name, r in runs.items():
        new_tokens = sorted(set(r["new_tokens"]))
        print(f"{name:<6} {r['llm_dtype']:<14} {sum(r['speech_tokens']) / audio_s:>12.1f} "
              f"{sum(r['prompt_tokens']) / len(r['prompt_tokens']):>10.0f} {','.join(map(str, new_tokens)):>12} "
              f"{r['encode_s']:>9.2f} {r['llm_s']:>8.2f} {r['wall_s']:>8.2f} {r['rtf']:>7.3f} {r['memory_mb']:>12.0f}")  # fmt: skip
    naive, ours = runs["naive"], runs["ours"]
    print(
        f"bench graph: clips={args.clips} seconds={args.seconds:g} naive_rtf={naive['rtf']:.3f} ours_rtf={ours['rtf']:.3f} "
        f"naive_{memory}={naive['memory_mb']:.0f} ours_{memory}={ours['memory_mb']:.0f} dtype={dtype} "
        f"ratio={naive['rtf'] / ours['rtf']:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
