"""Speculative decoding: decode speed with and without a draft model, acceptance, identical outputs.

    python bench/speculative.py [--size base|tiny] [--draft-layers 2] [--draft-tokens 4]
                                [--prompts 4] [--new-tokens 48] [--model models/default]
                                [--manifest ../corpus/manifest.jsonl --split test --limit 20]
                                [--speedups merge]

Two measurements, greedy, batch 1 (the latency case speculative decoding is for), in one process:

1. A base-size target: a Llama-shaped decoder of ~0.4B parameters (hidden 1024, 24 layers,
   32k vocabulary), random weights, and a layer-skip draft (Draft & Verify, Zhang et al., 2023;
   LayerSkip, Elhoushi et al., 2024): the target's own first --draft-layers layers with its
   embeddings, final norm and head, so it costs ~(draft layers + head) / (all layers + head) of a
   target forward. How often such a draft is right depends on the weights: with random weights the
   residual stream is dominated by the token embedding, so acceptance is HIGH and says nothing about
   a trained model. The speed-up is printed next to the acceptance that produced it; the expected
   speed-up at other acceptance rates follows Leviathan et al. (2023), eq. 1, and is printed as well.
2. With --model DIR: the bundle's LLM on ASR requests for the example clips (or, with --manifest,
   the --split's fixed held-out sample of --limit items per task of --tasks, as bench default takes
   it), drafted by the bundle's draft LM (DIR/draft/) when it ships one, else by a lookup draft of
   the text its prompt reads (`LookupDraft`, free to run: the transcriber's reading where the bundle
   has one, else the CTC transcript, as `decode_speech` drafts; prompt lookup for the other tasks):
   trained parts, so the acceptance is real. One row per task. Each row also times the prefill alone
   (the prompt's forward and one token, the same in both decodings) and gives the speed-up of the
   decoding after it: for answers of a few tokens (ASR: ~9) the prefill of the speech and the
   transcript is most of the time, and no draft can shorten it. --speedups loads the bundle's LLM
   as `spokenlm.lm.LLMSpeedups` (e.g. merge: LoRA folded into the weights). A bundle that answers
   ASR from its transcript (`asr_from_transcript`) runs no LLM for ASR at all: its ASR row is the
   LLM's own decoding of the request, which that bundle skips.

Both assert that the speculative output equals plain greedy decoding token for token.
The last line: ``bench speculative: ... ratio=<plain time / speculative time>`` for measurement 1.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from spokenlm.lm import DraftLM, GenerationConfig, LLMSpeedups, SpeechLLM, build_llm, speculative_generate
from spokenlm.tokenizer import train_bpe_tokenizer

REPO = Path(__file__).resolve().parents[1]
PROMPTS = [
    "transcribe the recording of the meeting about the budget:",
    "the weather in the north will be",
    "translate into spanish: where is the train station",
    "summarize: the committee met on tuesday and agreed to",
    "the quick brown fox jumps over",
    "named entities in this sentence include",
]
SIZES = {
    # ~0.4B: the compute of a 0.5B-class model, with a 32k (Llama) vocabulary
    "base": dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=24, num_attention_heads=16,
                 num_key_value_heads=16, vocab_size=32000),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=2000),
}  # fmt: skip


def layer_skip_draft(target: SpeechLLM, layers: int) -> DraftLM:
    """A draft made of the target's first `layers` decoder layers, its embeddings, final norm and head."""
    config = target.model.config.to_dict()
    config["num_hidden_layers"] = layers
    model = AutoModelForCausalLM.from_config(type(target.model.config).from_dict(config))
    keep = {k: v for k, v in target.model.state_dict().items() if not _deeper_layer(k, layers)}
    model.load_state_dict(keep, strict=True)
    return DraftLM(llm=SpeechLLM(model=model.eval(), tokenizer=target.tokenizer))


def _deeper_layer(key: str, layers: int) -> bool:
    parts = key.split(".")
    return "layers" in parts and int(parts[parts.index("layers") + 1]) >= layers


def params(llm: SpeechLLM) -> int:
    return sum(p.numel() for p in llm.model.parameters())


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def expected_speedup(alpha: float, k: int, cost: float) -> float:
    """Leviathan et al. (2023), eq. 1 over their Theorem 3.8: tokens per block / cost per block,
    with cost = draft forward / target forward (the verify forward counted as one target forward)."""
    tokens = k + 1 if alpha >= 1 else (1 - alpha ** (k + 1)) / (1 - alpha)
    return tokens / (k * cost + 1)


def bench_base(args) -> dict:
    tokenizer = train_bpe_tokenizer(PROMPTS * 20, vocab_size=400)
    torch.manual_seed(0)
    target = build_llm(LlamaConfig(**SIZES[args.size], max_position_embeddings=2048), tokenizer)
    draft = layer_skip_draft(target, args.draft_layers)
    plain_config = GenerationConfig(max_new_tokens=args.new_tokens, draft_tokens=0)
    spec_config = GenerationConfig(max_new_tokens=args.new_tokens, draft_tokens=args.draft_tokens)
    prompts = (PROMPTS * args.prompts)[: args.prompts]

    target.generate(prompts[:1], config=GenerationConfig(max_new_tokens=4))  # warm-up: allocator, kernels
    plain, t_plain = timed(lambda: [target.generate([p], config=plain_config)[0] for p in prompts])
    runs, t_spec = timed(lambda: [speculative_generate(target, draft, [p], config=spec_config) for p in prompts])
    spec = [out[0] for out, _ in runs]
    drafted = sum(stats.drafted for _, stats in runs)
    accepted = sum(stats.accepted for _, stats in runs)
    tokens = sum(len(o.token_ids) for o in plain)
    identical = [o.token_ids for o in spec] == [o.token_ids for o in plain]
    assert identical, "speculative greedy output differs from plain greedy output"

    # the draft's cost relative to the target, measured on one decode step each
    ids = torch.tensor([[5]])
    with torch.inference_mode():
        _, t_state = target.prefill(*target.embed_prompts(prompts[:1]))
        _, d_state = draft.llm.prefill(*draft.llm.embed_prompts(prompts[:1]))
        _, t_step = timed(lambda: [target.decode_step(ids, t_state) for _ in range(5)])
        _, d_step = timed(lambda: [draft.llm.decode_step(ids, d_state) for _ in range(5)])
    return {
        "target_params": params(target),
        "draft_params": params(draft.llm),
        "tokens": tokens,
        "plain_s": t_plain,
        "spec_s": t_spec,
        "acceptance": accepted / max(drafted, 1),
        "cost": d_step / t_step,
        "identical": identical,
    }


def bundle_requests(args) -> dict[str, list[tuple[torch.Tensor, "TaskRequest"]]]:
    """Per task, (clip, request) pairs for measurement 2: the example clips (ASR), or with --manifest
    the --split's fixed held-out sample (`heldout_items`, as bench default takes it), --limit per task."""
    from spokenlm.audio import load_audio
    from spokenlm.recipes.speechlm import heldout_items
    from spokenlm.tasks import TaskRequest
    from spokenlm.train.data import read_manifest

    if args.manifest is None:
        examples = sorted((REPO / "examples").glob("*.flac")) + sorted((REPO / "examples").glob("*.wav"))
        return {"asr": [(load_audio(path), TaskRequest(task="asr")) for path in examples]}
    utts = read_manifest(args.manifest, splits=(args.split,))
    by_task = heldout_items(utts, args.limit)
    tasks = list(by_task) if args.tasks == ["all"] else args.tasks
    missing = [t for t in tasks if t not in by_task]
    if missing:
        raise SystemExit(f"{args.manifest} split {args.split!r} has no items for tasks {missing}")
    return {t: [(load_audio(item.utt.audio), item.request) for item in by_task[t]] for t in tasks}


def bench_bundle(model_dir: Path, args) -> dict[str, dict] | None:
    """Per task: plain and speculative greedy decoding of each (clip, request), batch 1, timed."""
    from spokenlm.model import decoding_inputs, load_bundle
    from spokenlm.speech import adapt

    model = load_bundle(model_dir, speedups=LLMSpeedups.parse(args.speedups))
    plain_config = GenerationConfig(max_new_tokens=args.new_tokens, draft_tokens=0)
    prefill_config = GenerationConfig(max_new_tokens=1, draft_tokens=0)
    # ctc_draft: decoding_inputs gives the lookup draft where the bundle ships no draft LM
    spec_config = GenerationConfig(max_new_tokens=args.new_tokens, draft_tokens=args.draft_tokens, ctc_draft=True)
    results = {}
    for task, pairs in bundle_requests(args).items():
        row = {"items": len(pairs), "plain_s": 0.0, "spec_s": 0.0, "prefill_s": 0.0, "drafted": 0, "accepted": 0,
               "tokens": 0, "identical": True}  # fmt: skip
        for clip, request in pairs:
            with torch.inference_mode():
                speech = adapt(model.adapter, model.encode_recordings([clip]))
            # the prompt and the lookup reference the bundle decodes with: with a transcriber, its reading
            prompts, projected, lengths, draft, _ = decoding_inputs(model.llm, speech, [request], spec_config, draft=model.draft)
            if draft is None:
                print(f"{model_dir} has neither a draft LM nor a CTC compressor: bundle measurement skipped")
                return None
            _, dt = timed(lambda: model.llm.generate(prompts, projected, lengths, prefill_config))
            row["prefill_s"] += dt
            plain, dt = timed(lambda: model.llm.generate(prompts, projected, lengths, plain_config))
            row["plain_s"] += dt
            (spec, stats), dt = timed(
                lambda: speculative_generate(model.llm, draft, prompts, projected, lengths, spec_config)
            )
            row["spec_s"] += dt
            row["drafted"] += stats.drafted
            row["accepted"] += stats.accepted
            row["tokens"] += len(plain[0].token_ids)
            row["identical"] &= spec[0].token_ids == plain[0].token_ids
        assert row["identical"], f"{task}: speculative greedy output differs from plain greedy output"
        row["acceptance"] = row["accepted"] / max(row["drafted"], 1)
        row["kind"] = "its draft LM" if model.draft is not None else "a lookup draft of the prompt's transcript"
        row["asr_from_transcript"] = model.llm.asr_from_transcript
        results[task] = row
    return results


def decoding_speedup(row: dict) -> float:
    """Plain over speculative time after the prefill (timed alone, the same in both); nan where a
    decoding took no longer than its prefill did (timing noise on one-token answers)."""
    plain, spec = row["plain_s"] - row["prefill_s"], row["spec_s"] - row["prefill_s"]
    return plain / spec if plain > 0 and spec > 0 else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="base")
    parser.add_argument("--draft-layers", type=int, default=2)
    parser.add_argument("--draft-tokens", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--model", type=Path, default=None, help="a bundle with a draft/ folder (measurement 2)")
    parser.add_argument("--manifest", type=Path, default=None,
                        help="measurement 2 on this corpus manifest's --split clips (default: the example clips)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=20, help="items per task taken from the manifest split")
    parser.add_argument("--tasks", nargs="+", default=["asr"], help="measurement 2's tasks (with --manifest), or: all")
    parser.add_argument("--speedups", default="", help="measurement 2: LLM speed-ups to load the bundle with, e.g. merge")
    args = parser.parse_args(argv)

    r = bench_base(args)
    ratio = r["plain_s"] / r["spec_s"]
    print(f"1. {args.size} target ({r['target_params'] / 1e6:.1f}M params) with a {args.draft_layers}-layer "
          f"layer-skip draft ({r['draft_params'] / 1e6:.1f}M), greedy, batch 1, {args.prompts} prompts x "
          f"{args.new_tokens} tokens")  # fmt: skip
    print(f"| decoding | seconds | tokens/s |\n|---|---|---|\n"
          f"| plain | {r['plain_s']:.2f} | {r['tokens'] / r['plain_s']:.1f} |\n"
          f"| speculative, {args.draft_tokens} drafted per block | {r['spec_s']:.2f} | {r['tokens'] / r['spec_s']:.1f} |")  # fmt: skip
    print(f"acceptance {r['acceptance']:.3f} (random weights: not a trained model's), draft/target step cost "
          f"{r['cost']:.2f}, identical outputs: {r['identical']}")
    print("expected speed-up at other acceptance rates (Leviathan et al. eq. 1, measured cost): "
          + ", ".join(f"{a:.1f}: {expected_speedup(a, args.draft_tokens, r['cost']):.2f}x" for a in (0.5, 0.7, 0.8, 0.9)))

    bundle = bench_bundle(args.model, args) if args.model is not None else None
    extra = ""
    if bundle:
        kind = next(iter(bundle.values()))["kind"]
        print(f"2. {args.model} with {kind}, greedy, batch 1, {args.draft_tokens} drafted per block, LLM speed-ups "
              f"{args.speedups or 'none'}; outputs identical")  # fmt: skip
        print("| task | items | tokens | plain s | speculative s | speed-up | prefill s | decoding speed-up | acceptance |\n"
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|")  # fmt: skip
        for task, b in bundle.items():
            print(f"| {task} | {b['items']} | {b['tokens']} | {b['plain_s']:.2f} | {b['spec_s']:.2f} | "
                  f"{b['plain_s'] / b['spec_s']:.2f}x | {b['prefill_s']:.2f} | {decoding_speedup(b):.2f}x | {b['acceptance']:.3f} |")
        if "asr" in bundle and bundle["asr"]["asr_from_transcript"]:
            print(f"{args.model} answers ASR from its transcript (asr_from_transcript): the LLM decodes no ASR token; "
                  "the asr row is the LLM's own decoding of the request, which the bundle skips")  # fmt: skip
        extra = "".join(f" {t}_acceptance={b['acceptance']:.3f} {t}_ratio={b['plain_s'] / b['spec_s']:.2f}"
                        f" {t}_decoding_ratio={decoding_speedup(b):.2f}" for t, b in bundle.items())  # fmt: skip
    print(
        f"bench speculative: size={args.size} draft_layers={args.draft_layers} draft_tokens={args.draft_tokens} "
        f"acceptance={r['acceptance']:.3f} cost={r['cost']:.2f} plain_tok_s={r['tokens'] / r['plain_s']:.2f} "
        f"spec_tok_s={r['tokens'] / r['spec_s']:.2f} identical={r['identical']}{extra} ratio={ratio:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
