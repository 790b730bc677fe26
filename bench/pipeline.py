"""Our bundle against three peer recognizers on the same clips in one run: WER, real-time factor, peak RSS.

    python bench/pipeline.py [--model models/default | --peers-only] [--whisper DIR] [--speedups merge,bf16 ...]
                             [--manifest ../corpus/manifest.jsonl] [--split test] [--limit 200]
                             [--tsv FILE ...] [--threads 2] [--batch 8]

The recognizers (spokenlm/peers.py):
- ours: the bundle (``--model``; default models/default when it holds a bundle, else the peers run
  alone and the report says so), ``SpeechLM.run`` with ASR requests, greedy, batches of --batch clips
  sorted by length (what the server's dynamic batching does); ``--peers-only`` leaves it out;
- pocketsphinx: its own US-English model, one clip at a time (it has no batch mode);
- whisper_hf: Whisper tiny.en whole (encoder + decoder) through transformers, fp32, greedy, batches of
  --batch (every clip padded to Whisper's 30-s window): the base our default bundle's encoder is, run
  by our code;
- faster_whisper: the same tiny.en CTranslate2 dir through faster-whisper, int8, beam 5, no VAD, one
  clip at a time: the recognizer a user would pick instead of ours.
``--whisper`` is that dir (default: the tiny.en base, ``spokenlm bases fetch``). Each ``--speedups
LIST`` adds the bundle once more as ``ours[LIST]``, its LLM changed for inference
(``spokenlm.lm.LLMSpeedups``: merged LoRA, bf16, int8 dynamic quantization) and, with the item
``ctc-draft``, decoded speculatively from a lookup of the CTC transcript (exact: the same greedy
output), so a speed-up is kept only where this table shows it pays at the same WER (issue 17).

Clips: the --split utterances of a corpus manifest (`spokenlm data synth`; its test split holds
sentences and voice settings never used in training), the first --limit of them in manifest order,
and/or any `file<TAB>transcript` TSV (../shared/data/speech/librivox_smoke/manifest.tsv, real read
speech). Each set is scored on its own as well.

Each recognizer runs in its own child process (``--worker NAME``) that loads the clips, builds the
recognizer, warms it up on the first clip, then transcribes them all once. Real-time factor = wall
seconds of that pass / audio seconds (loading audio and models excluded), with --threads intra-op
threads (torch for ours and whisper_hf, CTranslate2's cpu_threads for faster_whisper; pocketsphinx
has one). Peak RSS = the child's VmHWM (/proc/self/status): the most resident memory its process ever
held (Python, torch, the clips, the model, decoding). VmHWM belongs to the process image and starts
afresh at exec, unlike ``ru_maxrss``, which survives exec and would count the parent's memory too.
Every child loads the same clips (importing torch) before it imports and builds its recognizer; its
RSS then is the baseline ("over baseline" = peak minus it: what the recognizer itself took).

WER: corpus WER in percent (jiwer via spokenlm.slue.metrics) after the same normalization of
references and of every recognizer's output: ``spokenlm.peers.english_normal_form`` (lower case, no
punctuation, and Whisper's English normalizer, so "Mr." = "mister" and "25" = "twenty five" whoever
wrote them).

The last line:

    bench pipeline: clips=N audio_min=M ours_wer=.. ours_rtf=.. ours_rss_mb=.. pocketsphinx_wer=..
        ... faster_whisper_rss_mb=.. ratio_is=faster_whisper_rtf/ours_rtf ratio=<that>

(on one line; > 1: we are faster than faster-whisper). Without a bundle ``ours=none`` takes the ours_*
keys' place and the ratio is faster_whisper_rtf / whisper_hf_rtf: faster-whisper against the same
weights run by our code (``ratio_is`` says which).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from spokenlm.audio import SAMPLE_RATE

# The rest of spokenlm is imported where it is used: a child imports only what its recognizer needs
# (transformers alone holds ~300 MB of RSS), so its peak RSS is that recognizer's.

REPO = Path(__file__).resolve().parents[1]
DEFAULT_BUNDLE = REPO / "models" / "default"
RECOGNIZERS = {  # name -> how it decodes, for the table
    "ours": "bundle, greedy, batches of {batch}",
    "pocketsphinx": "its US-English model, one clip at a time",
    "whisper_hf": "tiny.en via transformers, fp32, greedy, batches of {batch}",
    "faster_whisper": "tiny.en via faster-whisper, int8, beam 5, no VAD, one clip at a time",
}


@dataclass(frozen=True)
class Clip:
    set: str
    id: str
    wav: torch.Tensor
    reference: str

    @property
    def seconds(self) -> float:
        return self.wav.shape[-1] / SAMPLE_RATE


@dataclass(frozen=True)
class Run:
    """One recognizer's pass over the clips, as its child process reports it."""

    name: str
    hyps: list[str]  # normalized transcripts, in clip order
    seconds: float  # wall seconds of the timed pass
    peak_rss_mb: float  # the child's VmHWM
    base_rss_mb: float  # its RSS after imports and clips, before the recognizer was built
    notes: list[str]


def manifest_clips(path: Path, split: str, limit: int) -> list[Clip]:
    from spokenlm.audio import load_audio
    from spokenlm.train.data import read_manifest

    utts = [u for u in read_manifest(path, splits=(split,)) if "text" in u.labels][:limit]
    return [Clip(f"{path.parent.name}/{split}", u.id, load_audio(u.audio), u.labels["text"]) for u in utts]


def tsv_clips(path: Path) -> list[Clip]:
    from spokenlm.audio import load_audio
    from spokenlm.data.text import normalize

    with path.open(newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    if rows and not {"file", "transcript"} <= set(rows[0]):
        raise ValueError(f"{path}: expected columns file and transcript, got {sorted(rows[0])}")
    return [Clip(path.parent.name, r["file"], load_audio(path.parent / r["file"]), normalize(r["transcript"])) for r in rows]


def load_clips(args: argparse.Namespace) -> list[Clip]:
    clips = manifest_clips(args.manifest, args.split, args.limit) if args.manifest else []
    for tsv in args.tsv:
        clips += tsv_clips(tsv)
    return clips


def run_asr(model, clips: list[Clip], batch: int, max_new_tokens: int, ctc_draft: bool = False,
            batch_timings: list | None = None) -> list:  # fmt: skip
    """The bundle's ASR RunOutput per clip (in clip order), greedy, in length-sorted batches;
    ctc_draft: speculative, drafted by a lookup of each clip's CTC transcript (the same output).
    batch_timings: each batch's stage times (`RunOutput.timing_ms`, shared by its outputs) are appended."""
    from spokenlm.lm import GenerationConfig
    from spokenlm.tasks import TaskRequest

    order = sorted(range(len(clips)), key=lambda i: clips[i].seconds)
    outputs: list = [None] * len(clips)
    config = GenerationConfig(max_new_tokens=max_new_tokens, ctc_draft=ctc_draft)
    for start in range(0, len(order), batch):
        index = order[start : start + batch]
        outs = model.run([clips[i].wav for i in index], [TaskRequest(task="asr")] * len(index), config)
        for i, out in zip(index, outs):
            outputs[i] = out
        if batch_timings is not None and outs:
            batch_timings.append(dict(outs[0].timing_ms))
    return outputs


CTC_DRAFT = "ctc-draft"  # a --speedups item that is a decoding option, not an LLM change


def _variant_items(name: str) -> list[str]:
    """"ours[merge, ctc-draft]" -> ["merge", "ctc-draft"]; plain "ours" -> []."""
    return [i.strip() for i in name[len("ours[") : -1].split(",")] if name.startswith("ours[") else []


def variant_speedups(name: str) -> str:
    """"ours[merge,bf16,ctc-draft]" -> "merge,bf16" (the LLM's); plain "ours" -> "" (no speed-ups)."""
    return ",".join(i for i in _variant_items(name) if i != CTC_DRAFT)


def variant_ctc_draft(name: str) -> bool:
    """Whether the variant decodes speculatively with the CTC lookup draft ("ours[...,ctc-draft]")."""
    return CTC_DRAFT in _variant_items(name)


def describe(name: str) -> str:
    if name.startswith("ours["):
        draft = ", speculative from the CTC transcript" if variant_ctc_draft(name) else ""
        return f"{RECOGNIZERS['ours']}, LLM speed-ups {variant_speedups(name) or 'none'}{draft}"
    return RECOGNIZERS[name]


def wer(refs: list[str], hyps: list[str]) -> float:
    """Corpus WER (%) with references and hypotheses in ``english_normal_form``."""
    from spokenlm.peers import english_normal_form
    from spokenlm.slue.metrics import word_error_rate

    return word_error_rate([english_normal_form(r) for r in refs], [english_normal_form(h) for h in hyps]).wer


# --------------------------------------------------------------------------------------------------
# A child: one recognizer


def _rss_mb(key: str) -> float:
    """VmHWM (peak) or VmRSS (now) of this process, in MiB; ru_maxrss where /proc is missing."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) / 1024  # kB
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def worker(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    clips = load_clips(args)  # imports torch and spokenlm.audio: every child's baseline
    base_rss = _rss_mb("VmRSS")
    notes: list[str] = []
    if args.worker.startswith("ours"):
        from spokenlm.data.text import normalize
        from spokenlm.lm import LLMSpeedups
        from spokenlm.model import load_bundle

        model = load_bundle(args.model, speedups=LLMSpeedups.parse(variant_speedups(args.worker)))
        if not model.info.trained:
            notes.append(f"{args.model} is UNTRAINED (random weights): its WER is meaningless")
        run_asr(model, clips[:1], 1, 4)  # warm-up

        ctc_draft = variant_ctc_draft(args.worker)

        def transcribe(cs: list[Clip]) -> list[str]:
            return [normalize(o.result.text) for o in run_asr(model, cs, args.batch, args.max_new_tokens, ctc_draft)]

    else:
        from spokenlm.peers import FasterWhisper, Pocketsphinx, WhisperPeer

        if args.worker == "pocketsphinx":
            peer = Pocketsphinx()
        elif args.worker == "whisper_hf":
            peer = WhisperPeer(args.whisper, num_beams=1, batch_size=args.batch)
        else:
            peer = FasterWhisper(args.whisper, compute_type="int8", beam_size=5, cpu_threads=args.threads)
        peer.transcribe(clips[0].wav)  # warm-up

        def transcribe(cs: list[Clip]) -> list[str]:
            if isinstance(peer, WhisperPeer):  # batches; every clip is padded to 30 s, so order does not matter
                return peer.transcribe_batch([c.wav for c in cs])
            return [peer.transcribe(c.wav) for c in cs]

    t0 = time.perf_counter()
    hyps = transcribe(clips)
    seconds = time.perf_counter() - t0
    return {
        "hyps": hyps,
        "seconds": seconds,
        "peak_rss_mb": _rss_mb("VmHWM"),
        "base_rss_mb": base_rss,
        "notes": notes,
        "clips": [[c.set, c.id, c.reference, c.seconds] for c in clips],
    }


def run_worker(name: str, args: argparse.Namespace) -> tuple[Run, list]:
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        result = Path(tmp) / "result.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--result", str(result),
                   "--split", args.split, "--limit", str(args.limit), "--threads", str(args.threads),
                   "--batch", str(args.batch), "--max-new-tokens", str(args.max_new_tokens)]  # fmt: skip
        command += ["--manifest", str(args.manifest)] if args.manifest else []
        command += [arg for tsv in args.tsv for arg in ("--tsv", str(tsv))]
        command += ["--model", str(args.model)] if name.startswith("ours") else []
        command += ["--whisper", str(args.whisper)] if name in ("whisper_hf", "faster_whisper") else []
        print(f"running {name} ...", flush=True)
        env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        if done.returncode != 0 or not result.is_file():
            tail = "\n".join(done.stderr.strip().splitlines()[-15:])
            raise SystemExit(f"bench pipeline: {name} failed (exit {done.returncode}):\n{tail}")
        data = json.loads(result.read_text())
    run = Run(name, data["hyps"], data["seconds"], data["peak_rss_mb"], data["base_rss_mb"], data["notes"])
    return run, data["clips"]


# --------------------------------------------------------------------------------------------------
# The parent: runs the children and reports


def parse_args(argv: list[str] | None = None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="a bundle dir (default: models/default if it is one)")
    parser.add_argument("--peers-only", action="store_true", help="leave the bundle out even if models/default holds one")
    parser.add_argument("--whisper", type=Path, default=None, help="a CTranslate2 Whisper dir (default: the tiny.en base)")
    parser.add_argument("--manifest", type=Path, default=None, help="a corpus manifest.jsonl (default: none)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=200, help="clips taken from the manifest split")
    parser.add_argument("--tsv", type=Path, action="append", default=[], help="file<TAB>transcript TSV")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads of every recognizer")
    parser.add_argument("--batch", type=int, default=8, help="clips per batch (ours, whisper_hf)")
    parser.add_argument("--max-new-tokens", type=int, default=96, help="ours: tokens generated per clip at most")
    parser.add_argument("--show", type=int, default=3, help="print this many example hypotheses")
    parser.add_argument("--speedups", action="append", default=[], metavar="LIST",
                        help="also run ours with these LLM speed-ups (spokenlm.lm.LLMSpeedups: a comma list of "
                             "merge, bf16, int8), as the recognizer ours[LIST]; repeatable")  # fmt: skip
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # a child's job: a recognizer name
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads < 1 or args.batch < 1 or args.limit < 1 or args.max_new_tokens < 1:
        parser.error("--threads, --batch, --limit and --max-new-tokens must be positive")
    from spokenlm.lm import LLMSpeedups

    for value in args.speedups:
        try:
            LLMSpeedups.parse(variant_speedups(f"ours[{value}]"))
        except ValueError as e:
            parser.error(f"--speedups {value!r}: {e}")
    if args.worker and args.worker not in RECOGNIZERS and not args.worker.startswith("ours["):
        parser.error(f"unknown worker {args.worker!r}")
    return parser, args


def main(argv: list[str] | None = None) -> int:
    parser, args = parse_args(argv)
    if args.worker:
        args.result.write_text(json.dumps(worker(args)))
        return 0
    if not args.manifest and not args.tsv:
        parser.error("no clips: give --manifest and/or --tsv")
    names = list(RECOGNIZERS)
    names[1:1] = [f"ours[{value}]" for value in args.speedups]  # beside plain ours
    if args.peers_only and args.model is not None:
        parser.error("--peers-only leaves the bundle out: give --model or --peers-only, not both")
    if args.model is not None and not (args.model / "spokenlm.json").is_file():
        parser.error(f"--model {args.model}: no spokenlm.json there, so not a bundle")
    if args.model is None and not args.peers_only and (DEFAULT_BUNDLE / "spokenlm.json").is_file():
        args.model = DEFAULT_BUNDLE
    if args.model is None:
        if args.speedups:
            parser.error("--speedups needs a bundle (--model, or models/default)")
        names.remove("ours")
        why = "--peers-only" if args.peers_only else f"no bundle given and none at {DEFAULT_BUNDLE} (no trained bundle yet)"
        print(f"note: {why}: comparing the peers only")
    if args.whisper is None:
        from spokenlm.bases import WHISPER_TINY_EN, resolve_base

        args.whisper = resolve_base(WHISPER_TINY_EN)  # BaseError saying what to run when not fetched

    runs: dict[str, Run] = {}
    clips = None
    for name in names:
        runs[name], seen = run_worker(name, args)
        if clips is not None and seen != clips:
            raise SystemExit(f"bench pipeline: {name} saw other clips than {names[0]}")
        clips = seen
    for run in runs.values():
        for note in run.notes:
            print(f"note: {note}")
    sets, refs = [c[0] for c in clips], [c[2] for c in clips]
    audio_s = sum(c[3] for c in clips)

    print(f"\n| clips | n | audio min | {' | '.join(f'{n} WER %' for n in runs)} |")
    print("|---|---|---|" + "---|" * len(runs))
    for name in sorted(set(sets)):
        idx = [i for i, s in enumerate(sets) if s == name]
        row = [wer([refs[i] for i in idx], [run.hyps[i] for i in idx]) for run in runs.values()]
        seconds = sum(clips[i][3] for i in idx)
        print(f"| {name} | {len(idx)} | {seconds / 60:.1f} | {' | '.join(f'{w:.1f}' for w in row)} |")

    scores = {name: (wer(refs, run.hyps), run.seconds / audio_s) for name, run in runs.items()}
    print("\n| recognizer | WER % | RTF | peak RSS MB | over baseline MB | decoding |\n|---|---|---|---|---|---|")
    for name, run in runs.items():
        w, rtf = scores[name]
        print(f"| {name} | {w:.1f} | {rtf:.4f} | {run.peak_rss_mb:.0f} | {run.peak_rss_mb - run.base_rss_mb:.0f} | "
              f"{describe(name).format(batch=args.batch)} |")  # fmt: skip
    print(f"(threads: {args.threads}; every child's baseline, imports and clips: "
          f"{min(r.base_rss_mb for r in runs.values()):.0f}-{max(r.base_rss_mb for r in runs.values()):.0f} MB)")  # fmt: skip
    width = max(len(n) for n in runs) + 1
    for i in range(min(args.show, len(clips))):
        print(f"  {clips[i][1]}\n    {'ref:':<{width}} {refs[i]}")
        for name, run in runs.items():
            print(f"    {name + ':':<{width}} {run.hyps[i]}")

    mine = "ours" if "ours" in runs else "whisper_hf"
    fields = [f"clips={len(clips)}", f"audio_min={audio_s / 60:.1f}"] + ([] if "ours" in runs else ["ours=none"])
    for name, run in runs.items():
        w, rtf = scores[name]
        key = name.replace("[", "+").replace("]", "").replace(",", "+")  # ours[merge,bf16] -> ours+merge+bf16
        fields += [f"{key}_wer={w:.2f}", f"{key}_rtf={rtf:.4f}", f"{key}_rss_mb={run.peak_rss_mb:.0f}"]
    ratio = scores["faster_whisper"][1] / scores[mine][1]
    print(f"bench pipeline: {' '.join(fields)} ratio_is=faster_whisper_rtf/{mine}_rtf ratio={ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
