"""Tokens per second into the LLM against ASR WER, one row per compressor, on the same held-out clips.

    python bench/compression.py --bundle NAME=DIR [--bundle NAME=DIR ...]
                                [--manifest ../corpus/manifest.jsonl] [--split test] [--limit 200]
                                [--reference NAME]

Each compressor needs its own bundle: the adapter and LoRA learn to read one kind of token (50 Hz
frames, stacked frames, CTC blank removal, CTC frame averaging, Sylber syllables), so swapping the
compressor under a trained LLM measures nothing. Train one ASR bundle per compressor with the
speechlm recipe (`--set compressor_dir=... --set task_weights={asr: 1, ...: 0}`) from the same LLM
and data. For every bundle: the mean number of compressed tokens per second of audio fed to the
LLM, its corpus WER on the clips (greedy, batches of 8), and the LLM's time per second of audio (its
stage of `RunOutput.timing_ms`, summed over the batches): what fewer tokens save.

"best" is the bundle with the fewest tokens per second whose WER is within --max-loss-pct relative
of the --reference bundle's (default: the one with the most tokens per second, the least
compressed). The last line: ``bench compression: ... ratio=<reference tokens/s / best tokens/s>``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from spokenlm.data.text import normalize
from spokenlm.model import load_bundle
from spokenlm.slue.metrics import word_error_rate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pipeline import manifest_clips, run_asr  # noqa: E402  (bench/ is a folder of scripts, not a package)


def measure(model_dir: Path, clips, batch: int, max_new_tokens: int) -> tuple[float, float, float]:
    """(tokens per second into the LLM, WER %, LLM ms per second of audio) of one bundle on `clips`."""
    timings: list[dict] = []
    outputs = run_asr(load_bundle(model_dir), clips, batch, max_new_tokens, batch_timings=timings)
    seconds = sum(c.seconds for c in clips)
    tokens = sum(o.tokens_per_second * c.seconds for o, c in zip(outputs, clips))
    hyps = [normalize(o.result.text) for o in outputs]
    llm_ms = sum(t.get("llm", 0.0) for t in timings)
    return tokens / seconds, word_error_rate([c.reference for c in clips], hyps).wer, llm_ms / seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", action="append", required=True, metavar="NAME=DIR")
    parser.add_argument("--manifest", type=Path, default=Path("../corpus/manifest.jsonl"))
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--reference", help="the bundle WER losses are measured against")
    parser.add_argument("--max-loss-pct", type=float, default=5.0, help="allowed relative WER loss, percent")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    args = parser.parse_args(argv)
    bundles = {}
    for item in args.bundle:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            parser.error(f"--bundle takes NAME=DIR, got {item!r}")
        bundles[name] = Path(path)
    clips = manifest_clips(args.manifest, args.split, args.limit)
    if not clips:
        parser.error(f"no {args.split} clips with transcripts in {args.manifest}")

    rows = {name: measure(path, clips, args.batch, args.max_new_tokens) for name, path in bundles.items()}
    reference = args.reference or max(rows, key=lambda n: rows[n][0])
    if reference not in rows:
        parser.error(f"--reference {reference!r} is not one of the bundles: {', '.join(rows)}")
    ref_rate, ref_wer, ref_llm = rows[reference]
    print(f"{len(clips)} {args.split} clips, {sum(c.seconds for c in clips) / 60:.1f} min; reference: {reference}")
    print("| compressor | tokens/s | WER % | relative WER loss % | LLM ms per audio s | LLM time saved % |\n"
          "|---|---|---|---|---|---|")  # fmt: skip
    losses = {}
    for name, (rate, wer, llm) in sorted(rows.items(), key=lambda kv: -kv[1][0]):
        losses[name] = 100 * (wer - ref_wer) / ref_wer if ref_wer > 0 else (0.0 if wer == 0 else float("inf"))
        saved = 100 * (ref_llm - llm) / ref_llm if ref_llm > 0 else 0.0
        print(f"| {name} | {rate:.2f} | {wer:.2f} | {losses[name]:+.1f} | {llm:.1f} | {saved:+.1f} |")
    within = [n for n in rows if losses[n] <= args.max_loss_pct]
    best = min(within, key=lambda n: rows[n][0])  # the reference itself always qualifies
    print(
        f"bench compression: clips={len(clips)} reference={reference} reference_tokens_s={ref_rate:.2f} "
        f"reference_wer={ref_wer:.2f} best={best} best_tokens_s={rows[best][0]:.2f} best_wer={rows[best][1]:.2f} "
        f"best_loss_pct={losses[best]:.1f} best_llm_ms_per_s={rows[best][2]:.1f} ratio={ref_rate / rows[best][0]:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
