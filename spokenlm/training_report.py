"""models/default/TRAINING.md from what a run of models/train_default.sh left behind (issue 15 item 2).

    python -m spokenlm.training_report --runs runs --bench runs/bench_default.json --out runs/TRAINING.md

It reads, and never recomputes:
- `runs/chain.log`: when each stage started, and finished or was stopped (a stage that was
  interrupted and resumed has several runs; its minutes are their sum, `stage_times`);
- the corpus's own statistics (`stats.json` that `spokenlm data synth` writes; the FSDD manifest);
- each stage's `metrics.json` (its scalar fields);
- `spokenlm bench default --json` on the trained bundle: the bundle's figures against issue 15's
  targets, beside the peers and the naive cascade on the same clips.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

# the stages of models/train_default.sh, in order, and where each writes its metrics.json
STAGES = {
    "corpus": None, "fsdd": None, "ctc": "ctc", "ctc-lm": "ctc_lm", "whisper-tune": "whisper_tune",
    "transcriber": "transcriber", "speechlm": "speechlm", "heads": "heads", "heads-sentiment": "heads_sentiment",
    "translator": "translator",
}  # fmt: skip
# the headline metric of the tasks issue 15 sets no target for
REPORTED = {"qa": "f1", "summarize": "rougeL"}
PEERS = ("pocketsphinx", "faster-whisper", "cascade")


@dataclass
class StageTime:
    minutes: float = 0.0
    finished: bool = False
    parts: list[str] = field(default_factory=list)  # one per start: its minutes, or why it has none

    @property
    def starts(self) -> int:
        return len(self.parts)


def stage_times(chain_log: Path) -> dict[str, StageTime]:
    """Stage -> its minutes in `chain_log`, whose lines models/train_default.sh writes: "<UTC time>
    start <stage>: <command>", then "<UTC time> done <stage> in N min", or "<UTC time> stopped <stage>
    after N min" when the run was interrupted (its work is kept: every stage resumes from its
    checkpoints, so the stage's time is the sum of its runs). A start followed by neither has no
    known end (still running, or killed without a trace) and is left out of the sum, and said."""
    events: list[tuple[datetime, str, str]] = []
    for line in chain_log.read_text().splitlines():
        parts = line.split(maxsplit=2)
        if len(parts) < 3 or parts[1] not in ("start", "done", "stopped"):
            continue
        stage = parts[2].split(":", 1)[0].split(" in ", 1)[0].split(" after ", 1)[0].strip()
        events.append((datetime.fromisoformat(parts[0].replace("Z", "+00:00")), parts[1], stage))
    times: dict[str, StageTime] = {}
    for i, (when, kind, stage) in enumerate(events):
        if kind != "start":
            continue
        entry = times.setdefault(stage, StageTime())
        end = events[i + 1] if i + 1 < len(events) else None
        if end is None or end[1] == "start" or end[2] != stage:
            entry.parts.append("no end logged")
            continue
        minutes = (end[0] - when).total_seconds() / 60
        entry.minutes += minutes
        entry.finished = end[1] == "done"
        entry.parts.append(f"{minutes:.1f}" + ("" if end[1] == "done" else " (stopped)"))
    return times


def corpus_lines(corpus: Path, fsdd: Path | None) -> list[str]:
    stats = json.loads((corpus / "stats.json").read_text())
    splits = ", ".join(f"{s} {h:.2f} h" for s, h in stats["hours_by_split"].items())
    tasks = ", ".join(f"{t} {h:.2f} h" for t, h in stats["hours_by_task"].items())
    voices = stats.get("hours_by_voice", {})
    lines = [
        f"- Synthetic ({corpus}): {stats['utterances']:,} utterances, {stats['hours']:.2f} h ({splits}).",
        f"- Hours per task (an utterance may carry several): {tasks}.",
        f"- {len(voices)} voices; the test split also hears voice settings no other split does.",
    ]
    if fsdd is not None and (fsdd / "manifest.jsonl").is_file():
        rows = [json.loads(line) for line in (fsdd / "manifest.jsonl").read_text().splitlines() if line.strip()]
        by_split = Counter(r["split"] for r in rows)
        speakers = {s: sorted({r["voice"]["speaker"] for r in rows if r["split"] == s}) for s in by_split}
        takes = ", ".join(f"{s} {n} ({len(speakers[s])} speakers)" for s, n in sorted(by_split.items()))
        lines.append(f"- Real FSDD digit takes ({fsdd}): {takes}.")
    return lines


def _scalar_fields(metrics: dict) -> dict[str, object]:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def bench_lines(bench: dict) -> list[str]:
    """The bundle's rows against the targets, with the peers and the cascade where they ran."""
    systems = bench["systems"]
    ours = systems.get("ours", {}).get("scores", {})
    lines = ["| set/task | metric | ours | target | met | " + " | ".join(PEERS) + " |",
             "|---|---|---:|---|---|" + "---:|" * len(PEERS)]  # fmt: skip
    for key, scores in ours.items():
        target = bench["targets"].get(key)
        metric = target["metric"] if target else REPORTED.get(key.split("/", 1)[1], next(iter(scores)))
        value = scores.get(metric)
        if target and value is not None:
            met = value <= target["value"] if target["op"] == "<=" else value >= target["value"]
            goal, verdict = f"{target['op']} {target['value']:g}", "yes" if met else "**no**"
        else:
            goal, verdict = "reported", "—"
        peers = [_fmt(systems[p]["scores"].get(key, {}).get(metric, "—")) if p in systems else "—" for p in PEERS]
        lines.append(f"| {key} | {metric} | {_fmt(value)} ({scores.get('items', '?')} items) | {goal} | {verdict} | "
                     + " | ".join(peers) + " |")  # fmt: skip
    beats = bench.get("beats_cascade") or {}
    if beats:
        won = [k for k, v in beats.items() if v]
        lines.append(f"\nBeats the naive cascade on {len(won)} of {len(beats)} tasks"
                     + (f" (not: {', '.join(k for k, v in beats.items() if not v)})" if len(won) < len(beats) else "") + ".")  # fmt: skip
    return lines


def report(runs: Path, corpus: Path, fsdd: Path | None, bench: Path | None) -> str:
    times = stage_times(runs / "chain.log")
    out = ["# How this bundle was trained", "",
           "Made by `bash models/train_default.sh` (issue 15) on a 2-core CPU; this file by",
           "`python -m spokenlm.training_report` from what that run left in runs/.", "",
           "## Commands", "", "```bash", "make setup   # .venv, apt packages, the two pinned bases",
           "bash models/train_default.sh   # resumable: rerun after an interruption",
           "spokenlm bench default --model runs/speechlm/bundle --json runs/bench_default.json",
           "python -m spokenlm.training_report --runs runs --bench runs/bench_default.json --out runs/TRAINING.md",
           "```", "", "## Corpus", "", *corpus_lines(corpus, fsdd), "",
           "## Wall time per stage", "", "| stage | minutes | runs (minutes each) |", "|---|---:|---|"]  # fmt: skip
    total = 0.0
    for stage in STAGES:
        entry = times.get(stage)
        if entry is None:
            out.append(f"| {stage} | — | not in runs/chain.log |")
            continue
        total += entry.minutes
        note = "" if entry.finished else " — **not finished**"
        out.append(f"| {stage} | {entry.minutes:.1f} | {', '.join(entry.parts)}{note} |")
    out.append(f"| **all** | **{total:.1f}** ({total / 60:.2f} h) | |")
    if "bench" in times:  # evaluation, after the chain: not in the total
        out.append(f"| bench (evaluation) | {times['bench'].minutes:.1f} | {', '.join(times['bench'].parts)} |")
    out.append("")
    out += ["## Stage metrics (each stage's metrics.json, its scalar fields)", ""]
    for stage, directory in STAGES.items():
        path = runs / directory / "metrics.json" if directory else None
        if path is None or not path.is_file():
            continue
        fields = _scalar_fields(json.loads(path.read_text()))
        out += [f"### {stage}", "", "; ".join(f"{k} {_fmt(v)}" for k, v in fields.items()), ""]
    if bench is not None:
        out += ["## The bundle's figures (`spokenlm bench default`)", "", *bench_lines(json.loads(bench.read_text())), ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spokenlm.training_report", description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=Path, default=Path("runs"))
    parser.add_argument("--corpus", type=Path, default=Path("../corpus"))
    parser.add_argument("--fsdd", type=Path, default=Path("../corpus-fsdd"))
    parser.add_argument("--bench", type=Path, default=None, help="spokenlm bench default --json output")
    parser.add_argument("--out", type=Path, default=None, help="write here (default: print)")
    args = parser.parse_args(argv)
    if not (args.runs / "chain.log").is_file():
        parser.error(f"{args.runs / 'chain.log'} does not exist: run models/train_default.sh first")
    if not (args.corpus / "stats.json").is_file():
        parser.error(f"{args.corpus / 'stats.json'} does not exist: not a corpus that spokenlm data synth wrote")
    text = report(args.runs, args.corpus, args.fsdd, args.bench)
    if args.out is None:
        print(text)
    else:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
