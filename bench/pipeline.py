"""The default bundle against pocketsphinx on the same clips: WER and real-time factor of both.

    python bench/pipeline.py [--model models/default] [--manifest ../corpus/manifest.jsonl]
                             [--split test] [--limit 200] [--tsv FILE ...]

Clips: the --split utterances of a corpus manifest (`spokenlm data synth`; its test split holds
sentences and voice settings never used in training), the first --limit of them in manifest order,
and/or any `file<TAB>transcript` TSV (../shared/data/speech/librivox_smoke/manifest.tsv, real read
speech). Each TSV is scored on its own as well.

Ours: `SpeechLM.run` with ASR requests, greedy, batches of --batch clips sorted by length (what the
server's dynamic batching does). pocketsphinx: one clip at a time (it has no batch mode), its own
US-English model. Real-time factor = wall seconds / audio seconds, audio loading excluded for both,
2 threads here. WER: corpus WER (jiwer) on normalized text (lower case, no punctuation), both sides.

The last line: ``bench pipeline: ... ratio=<pocketsphinx WER / our WER>`` (> 1: we are more accurate).
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from spokenlm.audio import SAMPLE_RATE, load_audio
from spokenlm.data.text import normalize
from spokenlm.lm import GenerationConfig
from spokenlm.model import load_bundle
from spokenlm.peers import Pocketsphinx
from spokenlm.slue.metrics import word_error_rate
from spokenlm.tasks import TaskRequest
from spokenlm.train.data import read_manifest

REPO = Path(__file__).resolve().parents[1]


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
class Score:
    wer: float
    rtf: float


def manifest_clips(path: Path, split: str, limit: int) -> list[Clip]:
    utts = [u for u in read_manifest(path, splits=(split,)) if "text" in u.labels][:limit]
    return [Clip(f"{path.parent.name}/{split}", u.id, load_audio(u.audio), u.labels["text"]) for u in utts]


def tsv_clips(path: Path) -> list[Clip]:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    if rows and not {"file", "transcript"} <= set(rows[0]):
        raise ValueError(f"{path}: expected columns file and transcript, got {sorted(rows[0])}")
    return [Clip(path.parent.name, r["file"], load_audio(path.parent / r["file"]), normalize(r["transcript"])) for r in rows]


def run_asr(model, clips: list[Clip], batch: int, max_new_tokens: int) -> list:
    """The bundle's ASR RunOutput per clip (in clip order), greedy, in length-sorted batches."""
    order = sorted(range(len(clips)), key=lambda i: clips[i].seconds)
    outputs: list = [None] * len(clips)
    config = GenerationConfig(max_new_tokens=max_new_tokens)
    for start in range(0, len(order), batch):
        index = order[start : start + batch]
        for i, out in zip(index, model.run([clips[i].wav for i in index], [TaskRequest(task="asr")] * len(index), config)):
            outputs[i] = out
    return outputs


def score(clips: list[Clip], hyps: list[str], seconds: float) -> Score:
    wer = word_error_rate([c.reference for c in clips], hyps).wer
    return Score(wer=wer, rtf=seconds / sum(c.seconds for c in clips))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=REPO / "models" / "default")
    parser.add_argument("--manifest", type=Path, default=None, help="a corpus manifest.jsonl (default: none)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=200, help="clips taken from the manifest split")
    parser.add_argument("--tsv", type=Path, action="append", default=[], help="file<TAB>transcript TSV")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--show", type=int, default=3, help="print this many example hypotheses")
    args = parser.parse_args(argv)
    clips = manifest_clips(args.manifest, args.split, args.limit) if args.manifest else []
    for tsv in args.tsv:
        clips += tsv_clips(tsv)
    if not clips:
        parser.error("no clips: give --manifest and/or --tsv")

    model = load_bundle(args.model)
    if not model.info.trained:
        print(f"note: {args.model} is UNTRAINED (random weights): its WER is meaningless")
    peer = Pocketsphinx()
    run_asr(model, clips[:1], 1, 4)  # warm-up
    t0 = time.perf_counter()
    ours_h = [normalize(o.result.text) for o in run_asr(model, clips, args.batch, args.max_new_tokens)]
    ours_s = time.perf_counter() - t0
    peer_h, peer_s = [], 0.0
    for clip in clips:
        t0 = time.perf_counter()
        peer_h.append(peer.transcribe(clip.wav))
        peer_s += time.perf_counter() - t0

    sets = sorted({c.set for c in clips})
    print("| clips | n | audio min | ours WER % | pocketsphinx WER % |\n|---|---|---|---|---|")
    for name in sets:
        idx = [i for i, c in enumerate(clips) if c.set == name]
        sub = [clips[i] for i in idx]
        ours_w = word_error_rate([c.reference for c in sub], [ours_h[i] for i in idx]).wer
        peer_w = word_error_rate([c.reference for c in sub], [peer_h[i] for i in idx]).wer
        print(f"| {name} | {len(sub)} | {sum(c.seconds for c in sub) / 60:.1f} | {ours_w:.1f} | {peer_w:.1f} |")
    ours, peer_score = score(clips, ours_h, ours_s), score(clips, peer_h, peer_s)
    print(f"| all | {len(clips)} | {sum(c.seconds for c in clips) / 60:.1f} | {ours.wer:.1f} | {peer_score.wer:.1f} |")
    print(f"real-time factor: ours {ours.rtf:.4f} (batches of {args.batch}), pocketsphinx {peer_score.rtf:.4f}")
    for clip, o, p in list(zip(clips, ours_h, peer_h))[: args.show]:
        print(f"  {clip.id}\n    ref:          {clip.reference}\n    ours:         {o}\n    pocketsphinx: {p}")
    ratio = peer_score.wer / ours.wer if ours.wer > 0 else float("inf")
    print(
        f"bench pipeline: clips={len(clips)} audio_min={sum(c.seconds for c in clips) / 60:.1f} "
        f"ours_wer={ours.wer:.2f} ours_rtf={ours.rtf:.4f} pocketsphinx_wer={peer_score.wer:.2f} "
        f"pocketsphinx_rtf={peer_score.rtf:.4f} ratio={ratio:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
