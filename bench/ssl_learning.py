"""Issue 3's learning report: did the CPU-trained DinoSR and Sylber encoders learn anything?

On held-out utterances of a corpus manifest, three measurements:

1. **DinoSR layer probes** (after Pasad et al., 2021; ``spokenlm.probes``): per-layer linear-probe
   accuracy of frame-level character labels for the pretrained DinoSR student and for a randomly
   initialised encoder of the same config (seeded). Frame labels come from CTC forced alignment of
   the reference transcript against a separately trained CTC model (``--ctc``), used for nothing
   else. ``ratio`` on the last line = best-layer accuracy pretrained / best-layer accuracy random.
2. **Sylber segmentation** (Cho et al., 2024, §3.3): segments per second of the Sylber student's
   features, segmented with the thresholds in ``sylber.json``, and agreement of the segment
   boundaries with *word* boundaries from two forced aligners, each reported:
   - ``hmm``: pocketsphinx's HMM aligner (``spokenlm.peers.PocketsphinxAligner``: its US-English
     acoustic model and dictionary, 10 ms frames), the kind of reference the Sylber paper scores
     against (Montreal Forced Aligner word alignments). Clips with a word outside its dictionary are
     left out of this reference (said on stdout);
   - ``ctc``: the same CTC forced alignment as the probes. A character CTC trained on this small
     corpus is a weak aligner (its emissions are peaky and may sit anywhere inside a character), so
     its word edges scatter more;
   and for each:
   - recall = share of word boundaries with a segment boundary within 50 ms. This is the issue's
     "boundaries within 50 ms of forced-alignment word boundaries at least 70 % of the time";
   - precision = share of segment boundaries within 50 ms of a word boundary (syllables outnumber
     words, so it is low by design);
   - chance recall = the recall of as many boundaries as Sylber placed, drawn uniformly over each
     utterance (seeded, averaged over draws): what the recall figure has to be read against.
   Matching is many-to-one (a boundary counts if *any* boundary of the other side is near).
3. With ``--ssl-run``, the DinoSR recipe's own held-out figures (metrics.json, or metrics.jsonl
   while the run is unfinished): loss at the start and end, codebook perplexities.

Word boundaries. CTC forced alignment (``torchaudio.functional.forced_align``, blank 0) puts every
character of the normalised transcript on a run of frames; a word is a maximal run of non-space
characters; its start is the first frame of its first character and its end the last frame of its
last character + 1. Starts and ends of all words are pooled, then points within 20 ms of the first
point of their group are merged into their mean (a one-frame space would otherwise count the same
pause twice). Sylber boundaries (segment starts and ends) are pooled and merged the same way.

Time convention, the same for both sides: frame t of an encoder at rate r covers
[t / r + c, (t + 1) / r + c), so a frame span [s, e) has boundaries s / r + c and e / r + c. The
shift c = (receptive-field centre of frame 0) - 0.5 / r moves the nominal window onto the audio the
frame actually sees: 32.5 ms for the DinoSR fbank frontend (frame 0 sees samples [0, 1360), centre
42.5 ms, nominal centre 10 ms), 2.5 ms for a 400-sample first frame (wav2vec 2.0 conv stack, Sylber's
fbank). When the CTC model and the Sylber student share a frontend the shifts cancel; both are
printed. An encoder whose config has no ``receptive_field`` gets c = 0.

    python bench/ssl_learning.py --manifest ../corpus-small/manifest.jsonl --splits dev test \\
        --engine piper --pretrained runs/ssl-small/encoder --ctc runs/ctc-small \\
        --sylber runs/sylber-small --ssl-run runs/ssl-small --out runs/ssl-learning

Not here: training (spokenlm/recipes), the segmentation-time benchmark (bench/sylber_scaling.py).
"""

from __future__ import annotations

import argparse
import json
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, astuple, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from spokenlm.audio import SAMPLE_RATE, load_audio
from spokenlm.compress import load_compressor
from spokenlm.compress.vocab import BLANK, CharVocab
from spokenlm.encoders import build_encoder, load_encoder
from spokenlm.encoders.base import frame_shift_s
from spokenlm.encoders.sylber import segment_batch
from spokenlm.envelope import envelope_segments
from spokenlm.peers import PocketsphinxAligner
from spokenlm.probes import ProbeConfig, ProbeReport, ctc_log_prob_source, forced_align_labels, probe_layers
from spokenlm.train.data import Utterance, id_hash_order, read_manifest

TOLERANCE_S = 0.050  # the "within 50 ms"
DEDUP_S = 0.020  # boundaries this close are one boundary (one frame at 50 Hz)
_EPS = 1e-9  # so that a distance of exactly 50 ms (in float) still counts
CHANCE_DRAWS = 20
REFERENCES = {"hmm": "pocketsphinx HMM forced alignment", "ctc": "CTC forced alignment (--ctc)"}

Span = tuple[int, int]  # [start_frame, end_frame)


# ----------------------------------------------------------------------------------------------
# Held-out utterances


@dataclass(frozen=True)
class Clip:
    id: str
    wav: Tensor  # (S,) float 16 kHz
    text: str  # the reference transcript, task_labels["text"]

    @property
    def seconds(self) -> float:
        return self.wav.shape[0] / SAMPLE_RATE


def heldout_utterances(
    manifest: str | Path, *, splits: Sequence[str], engine: str | None, max_utterances: int, max_duration_s: float
) -> list[Utterance]:
    """Transcribed utterances of ``splits`` (voiced by ``engine`` if given), at most ``max_utterances``
    of them, chosen by a hash of the id: stable across runs and not the manifest's first template."""
    utts = read_manifest(manifest, splits=tuple(splits), max_duration_s=max_duration_s)
    utts = [u for u in utts if u.labels.get("text") and (engine is None or u.voice.get("engine") == engine)]
    if not utts:
        raise ValueError(
            f"{manifest} has no transcribed utterance in splits {', '.join(splits)}"
            + (f" voiced by {engine!r}" if engine else "")
        )
    return id_hash_order(utts)[:max_utterances]


# ----------------------------------------------------------------------------------------------
# Word boundaries from a CTC forced-alignment path


def char_runs(path: Sequence[int] | Tensor, *, blank: int = BLANK) -> list[tuple[int, int, int]]:
    """(id, start, end) of each character a CTC frame path spells, in order: a run of one non-blank
    id, ended by a change of id or a blank (so "l", blank, "l" is two characters)."""
    path = path.tolist() if isinstance(path, Tensor) else list(path)
    runs: list[tuple[int, int, int]] = []
    prev = blank
    for t, c in enumerate(path):
        if c != blank and c == prev:
            runs[-1] = (c, runs[-1][1], t + 1)
        elif c != blank:
            runs.append((c, t, t + 1))
        prev = c
    return runs


def word_spans(path: Sequence[int] | Tensor, *, space_id: int, blank: int = BLANK) -> list[Span]:
    """[start, end) frames of each word of a CTC path: a maximal run of non-space characters, from
    the first frame of its first character to the last frame of its last character + 1."""
    words: list[Span] = []
    open_word: Span | None = None
    for c, start, end in char_runs(path, blank=blank):
        if c == space_id:
            if open_word:
                words.append(open_word)
            open_word = None
        else:
            open_word = (open_word[0] if open_word else start, end)
    if open_word:
        words.append(open_word)
    return words


# ----------------------------------------------------------------------------------------------
# Boundaries in seconds, and matching them


def span_boundaries(spans: Sequence[Span], *, frame_rate_hz: float, shift_s: float = 0.0) -> list[float]:
    """Starts and ends of ``spans`` in seconds (frame t covers [t / r + shift, (t + 1) / r + shift)),
    merged within DEDUP_S (see ``dedup``)."""
    return dedup([t / frame_rate_hz + shift_s for span in spans for t in span])


def dedup(times: Sequence[float], within_s: float = DEDUP_S) -> list[float]:
    """Sorted ``times`` with each group of points within ``within_s`` of the group's first point
    replaced by the group's mean (anchoring on the first point keeps a chain of close points from
    collapsing into one)."""
    groups: list[list[float]] = []
    for t in sorted(times):
        if groups and t - groups[-1][0] <= within_s + _EPS:
            groups[-1].append(t)
        else:
            groups.append([t])
    return [sum(g) / len(g) for g in groups]


@dataclass(frozen=True)
class BoundaryScore:
    """Counts summed over utterances; the ratios are micro-averages."""

    reference: int  # word boundaries
    reference_hit: int  # ... with a segment boundary within the tolerance
    hypothesis: int  # segment boundaries
    hypothesis_hit: int  # ... with a word boundary within the tolerance

    @property
    def recall(self) -> float:
        return self.reference_hit / self.reference if self.reference else float("nan")

    @property
    def precision(self) -> float:
        return self.hypothesis_hit / self.hypothesis if self.hypothesis else float("nan")

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r > 0 else 0.0

    def __add__(self, other: BoundaryScore) -> BoundaryScore:
        return BoundaryScore(*(a + b for a, b in zip(astuple(self), astuple(other))))


def match_boundaries(
    reference: Sequence[float], hypothesis: Sequence[float], *, tolerance_s: float = TOLERANCE_S
) -> BoundaryScore:
    """Many-to-one matching of boundary times (seconds): a reference boundary is hit when some
    hypothesis boundary lies within ``tolerance_s`` of it, and the other way round."""

    def hits(points: Sequence[float], others: Sequence[float]) -> int:
        return sum(any(abs(p - o) <= tolerance_s + _EPS for o in others) for p in points)

    return BoundaryScore(len(reference), hits(reference, hypothesis), len(hypothesis), hits(hypothesis, reference))


def chance_recall(
    references: Sequence[Sequence[float]], counts: Sequence[int], durations_s: Sequence[float], *, seed: int
) -> float:
    """Mean recall over CHANCE_DRAWS of ``counts[i]`` boundaries drawn uniformly in [0, durations_s[i]]."""
    rng = random.Random(seed)
    recalls = []
    for _ in range(CHANCE_DRAWS):
        total = BoundaryScore(0, 0, 0, 0)
        for ref, n, duration in zip(references, counts, durations_s):
            total = total + match_boundaries(ref, [rng.uniform(0, duration) for _ in range(n)])
        recalls.append(total.recall)
    return sum(recalls) / len(recalls)


# ----------------------------------------------------------------------------------------------
# The measurements


@dataclass(frozen=True)
class Alignment:
    path: Tensor  # (T_ctc,) forced-alignment label per CTC frame (0 = blank)
    words: list[Span]  # CTC frames of each word


def align(clip: Clip, ctc: Callable[[Tensor], Tensor], vocab: CharVocab) -> Alignment:
    """CTC forced alignment of the clip's transcript; ValueError naming a clip that cannot align
    (no CTC character, or more characters than the CTC model has frames)."""
    ids = vocab.encode(clip.text)
    if not ids:
        raise ValueError(f"{clip.id}: no CTC character in {clip.text!r}")
    with torch.inference_mode():
        log_probs = ctc(clip.wav)  # (T, V)
    try:
        path = forced_align_labels(log_probs, ids)
    except ValueError as err:
        raise ValueError(f"{clip.id}: {err}") from err
    runs = [c for c, _, _ in char_runs(path)]
    if runs != ids:  # forced_align spells exactly the targets; anything else is a bug here
        raise AssertionError(f"{clip.id}: the alignment spells {vocab.decode(runs)!r}, not {clip.text!r}")
    return Alignment(path=path, words=word_spans(path, space_id=vocab.encode("a a")[1]))


@dataclass(frozen=True)
class Segmentation:
    """Sylber's boundaries on each clip, in seconds (segment starts and ends, merged within DEDUP_S)."""

    boundaries: list[list[float]]
    durations_s: list[float]  # audio seconds covered by the student's valid frames, per clip
    segments: int
    norm_threshold: float
    merge_threshold: float
    shift_s: float
    frame_rate_hz: float

    @property
    def segments_per_second(self) -> float:
        return self.segments / sum(self.durations_s)


@torch.inference_mode()
def sylber_boundaries(
    encoder: nn.Module, clips: Sequence[Clip], *, norm_threshold: float, merge_threshold: float
) -> Segmentation:
    """Segment each clip alone (no padding) with the given thresholds."""
    encoder.eval()
    shift = frame_shift_s(encoder)
    boundaries, durations, segments, rate = [], [], 0, encoder.frame_rate_hz
    for clip in clips:
        out = encoder(clip.wav[None], torch.tensor([clip.wav.shape[0]]))
        (spans,) = segment_batch(
            out.features.float(), out.lengths, norm_threshold=norm_threshold, merge_threshold=merge_threshold
        )
        boundaries.append(span_boundaries(spans, frame_rate_hz=out.frame_rate_hz, shift_s=shift))
        durations.append(int(out.lengths[0]) / out.frame_rate_hz)
        segments += len(spans)
    return Segmentation(boundaries, durations, segments, norm_threshold, merge_threshold, shift, rate)


def envelope_segmentation(clips: Sequence[Clip], like: Segmentation) -> Segmentation:
    """The loudness-envelope segments (``spokenlm.envelope``: the Sylber recipe's first-stage segmenter,
    no model) of each clip on the frames of ``like``'s encoder, scored the same way as a reference point."""
    boundaries, segments = [], 0
    for clip, seconds in zip(clips, like.durations_s):
        frames = round(seconds * like.frame_rate_hz)
        spans = envelope_segments(clip.wav, num_frames=frames, frame_rate_hz=like.frame_rate_hz, shift_s=like.shift_s)
        boundaries.append(span_boundaries(spans, frame_rate_hz=like.frame_rate_hz, shift_s=like.shift_s))
        segments += len(spans)
    return Segmentation(boundaries, list(like.durations_s), segments, math.nan, math.nan, like.shift_s, like.frame_rate_hz)


@dataclass(frozen=True)
class Agreement:
    """Sylber's boundaries against one reference's word boundaries, over the clips it aligned."""

    reference: str  # which aligner
    score: BoundaryScore
    clips: int
    words: int
    seconds: float
    chance_recall: float

    @property
    def words_per_second(self) -> float:
        return self.words / self.seconds if self.seconds else float("nan")


def agreement(
    name: str, seg: Segmentation, references: Sequence[list[float] | None], words: Sequence[int], *, seed: int
) -> Agreement:
    """Match ``seg`` to ``references[i]`` (word boundaries of clip i in seconds; None: clip i did not
    align with this reference and is left out) and draw the chance recall over the same clips."""
    kept = [i for i, ref in enumerate(references) if ref is not None]
    total = BoundaryScore(0, 0, 0, 0)
    for i in kept:
        total = total + match_boundaries(references[i], seg.boundaries[i])
    chance = chance_recall([references[i] for i in kept], [len(seg.boundaries[i]) for i in kept],
                           [seg.durations_s[i] for i in kept], seed=seed)  # fmt: skip
    return Agreement(name, total, len(kept), sum(words[i] for i in kept), sum(seg.durations_s[i] for i in kept), chance)


def hmm_word_boundaries(clips: Sequence[Clip], aligner: PocketsphinxAligner) -> tuple[list[list[float] | None], list[int]]:
    """Word boundaries of each clip from pocketsphinx's HMM forced alignment, merged within DEDUP_S;
    None for a clip it cannot align (a word without a pronunciation, or no path), said on stdout."""
    references, words = [], []
    for clip in clips:
        try:
            timed = aligner.align(clip.wav, clip.text)
        except ValueError as err:
            print(f"left out of the HMM reference: {clip.id}: {err}")
            references.append(None), words.append(0)
            continue
        references.append(dedup([t for w in timed for t in (w.start_s, w.end_s)]))
        words.append(len(timed))
    return references, words


def best_layer(report: ProbeReport) -> tuple[int, float]:
    best = max(report.layers, key=lambda p: p.accuracy)
    return best.index, best.accuracy


def ssl_run_summary(run_dir: str | Path) -> dict:
    """The DinoSR recipe's held-out figures: metrics.json when the run has finished, otherwise the
    first and last evaluation rows of metrics.jsonl (``"finished": False``)."""
    run_dir = Path(run_dir)
    summary_path, rows_path = run_dir / "metrics.json", run_dir / "metrics.jsonl"
    if summary_path.is_file():
        s = json.loads(summary_path.read_text())
        return {
            "finished": True,
            "steps": s.get("steps"),
            "wall_minutes": s.get("wall_minutes"),
            "loss_start": s.get("heldout_loss_start"),
            "loss_end": s.get("heldout_loss"),
            "loss_chance": s.get("heldout_loss_chance"),
            "perplexity_start": s.get("heldout_perplexity_start"),
            "perplexity_end": s.get("heldout_perplexity"),
        }
    if not rows_path.is_file():
        raise FileNotFoundError(f"{run_dir} has neither metrics.json nor metrics.jsonl")
    rows = [json.loads(line) for line in rows_path.read_text().splitlines() if line.strip()]
    evals = [r for r in rows if "val_loss" in r]
    if not evals:
        raise ValueError(f"{rows_path} has no held-out evaluation row (val_loss) yet")

    def ppl(row: dict) -> list[float]:
        return [row[k] for k in sorted((k for k in row if k.startswith("val_ppl_")), key=lambda k: int(k[8:]))]

    return {
        "finished": False,
        "steps": evals[-1]["step"],
        "wall_minutes": None,
        "loss_start": round(evals[0]["val_loss"], 4),
        "loss_end": round(evals[-1]["val_loss"], 4),
        "loss_chance": None,
        "perplexity_start": ppl(evals[0]),
        "perplexity_end": ppl(evals[-1]),
    }


# ----------------------------------------------------------------------------------------------
# Report


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--manifest", required=True, help="corpus manifest.jsonl")
    p.add_argument("--splits", nargs="+", default=["dev", "test"], help="held-out splits")
    p.add_argument("--engine", default=None, help="keep only utterances voiced by this TTS engine (piper, espeak)")
    p.add_argument("--max-utterances", type=int, default=60)
    p.add_argument("--max-duration-s", type=float, default=20.0)
    p.add_argument("--pretrained", required=True, help="saved DinoSR encoder directory")
    p.add_argument("--ctc", required=True, help="ctc recipe output: encoder/ and compressor/ (alignment only)")
    p.add_argument("--sylber", required=True, help="sylber recipe output: encoder/ and sylber.json")
    p.add_argument("--ssl-run", default=None, help="the DinoSR recipe's run directory (metrics.json[l])")
    p.add_argument("--out", default=None, help="write probe PNGs and ssl_learning.json here")
    p.add_argument("--seed", type=int, default=0, help="random-init encoder, probe split, chance draws")
    p.add_argument("--probe-max-iter", type=int, default=ProbeConfig().max_iter)
    p.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    args = p.parse_args(argv)
    if args.max_utterances < 2:
        p.error(f"--max-utterances must be >= 2 (the probes hold utterances out), got {args.max_utterances}")
    return args


def _fmt(values: Sequence[float] | None) -> str:
    return "-" if values is None else "[" + ", ".join(f"{v:.1f}" for v in values) + "]"


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    vocab = CharVocab()

    utts = heldout_utterances(
        args.manifest, splits=args.splits, engine=args.engine, max_utterances=args.max_utterances,
        max_duration_s=args.max_duration_s,
    )  # fmt: skip

    # frame labels: CTC forced alignment of the reference transcripts, once for everything below
    ctc_dir = Path(args.ctc)
    ctc_encoder, ctc_compressor = load_encoder(ctc_dir / "encoder").eval(), load_compressor(ctc_dir / "compressor")
    ctc = ctc_log_prob_source(ctc_encoder, ctc_compressor.eval())
    clips, alignments = [], []
    for utt in utts:
        clip = Clip(utt.id, load_audio(utt.audio), utt.labels["text"])
        try:
            alignments.append(align(clip, ctc, vocab))
            clips.append(clip)
        except ValueError as err:
            print(f"left out: {err}")
    if len(clips) < 2:
        raise ValueError(f"only {len(clips)} of {len(utts)} utterances align; the probes need 2")
    seconds = sum(c.seconds for c in clips)
    print(f"# ssl-learning: {len(clips)} held-out utterances ({seconds / 60:.1f} min) of {', '.join(args.splits)}"
          f"{f', engine {args.engine}' if args.engine else ''} from {args.manifest}\n")  # fmt: skip

    # 1. probes: pretrained DinoSR student vs the same config at random init
    config = ProbeConfig(seed=args.seed, max_iter=args.probe_max_iter)
    pretrained = load_encoder(args.pretrained).eval()
    torch.manual_seed(args.seed)
    random_init = build_encoder(pretrained.config).eval()
    utterances = [(c.wav, c.text) for c in clips]
    reports = {}
    for name, encoder in (("pretrained", pretrained), ("random-init", random_init)):
        # probe_layers re-times the CTC-frame labels onto the encoder's frames (map_frames)
        reports[name] = probe_layers(encoder, utterances, alignments=[a.path for a in alignments], config=config)
        source = args.pretrained if name == "pretrained" else f"seed {args.seed}"
        print(f"## Character probes, {name} encoder ({source})\n")
        print(reports[name].to_markdown())
    (p_layer, p_acc), (r_layer, r_acc) = best_layer(reports["pretrained"]), best_layer(reports["random-init"])
    majority = reports["pretrained"].majority_accuracy
    print("| encoder | best layer | accuracy | over majority |\n|---|---:|---:|---:|")
    for name, layer, acc in (("pretrained", p_layer, p_acc), ("random-init", r_layer, r_acc)):
        print(f"| {name} | {layer} | {acc:.3f} | {acc - majority:+.3f} |")
    print(f"\nMajority-class baseline {majority:.3f}; ratio pretrained / random-init best = {p_acc / r_acc:.3f}\n")

    # 2. Sylber segmentation vs forced-alignment word boundaries, from two aligners
    sylber_dir = Path(args.sylber)
    sylber_json = json.loads((sylber_dir / "sylber.json").read_text())
    sylber_encoder = load_encoder(sylber_dir / sylber_json.get("encoder", "encoder"))
    seg = sylber_boundaries(sylber_encoder, clips, norm_threshold=float(sylber_json["norm_threshold"]),
                            merge_threshold=float(sylber_json["merge_threshold"]))  # fmt: skip
    ctc_rate, ctc_shift = ctc_encoder.frame_rate_hz, frame_shift_s(ctc_encoder)
    ctc_refs = [span_boundaries(a.words, frame_rate_hz=ctc_rate, shift_s=ctc_shift) for a in alignments]
    hmm_refs, hmm_words = hmm_word_boundaries(clips, PocketsphinxAligner())
    ctc_words = [len(a.words) for a in alignments]
    agreements = [
        agreement("hmm", seg, hmm_refs, hmm_words, seed=args.seed),
        agreement("ctc", seg, ctc_refs, ctc_words, seed=args.seed),
    ]
    envelope = envelope_segmentation(clips, like=seg)
    envelope_agreements = [
        agreement("hmm", envelope, hmm_refs, hmm_words, seed=args.seed),
        agreement("ctc", envelope, ctc_refs, ctc_words, seed=args.seed),
    ]
    print("## Sylber segmentation vs forced-alignment word boundaries\n")
    print(f"thresholds from {sylber_dir / 'sylber.json'}: norm {seg.norm_threshold:.4g}, merge {seg.merge_threshold:.4g}; "
          f"frame shift c: Sylber {1000 * seg.shift_s:.1f} ms, CTC {1000 * ctc_shift:.1f} ms, "
          f"pocketsphinx {1000 * PocketsphinxAligner.FRAME_SHIFT_S:.1f} ms "
          f"(frame t covers [t/r + c, (t+1)/r + c)); boundaries merged within {1000 * DEDUP_S:.0f} ms; "
          f"tolerance {1000 * TOLERANCE_S:.0f} ms. Sylber: {seg.segments_per_second:.2f} segments per second "
          f"({seg.segments} in {sum(seg.durations_s):.1f} s)\n")  # fmt: skip
    print("| segments from | word boundaries from | clips | words/s | recall (word boundaries hit within 50 ms) "
          "| precision (segment boundaries near a word boundary) | F1 | chance recall |\n|---|---|---:|---:|---:|---:|---:|---:|")
    for source, group in (("Sylber", agreements), ("loudness envelope (no model)", envelope_agreements)):
        for g in group:
            sc = g.score
            print(f"| {source} | {REFERENCES[g.reference]} | {g.clips} | {g.words_per_second:.2f} | {sc.recall:.3f} "
                  f"({sc.reference_hit}/{sc.reference}) | {sc.precision:.3f} ({sc.hypothesis_hit}/{sc.hypothesis}) "
                  f"| {sc.f1:.3f} | {g.chance_recall:.3f} |")  # fmt: skip
    print(f"\nThe loudness envelope ({envelope.segments_per_second:.2f} segments per second) is the segmenter the "
          "Sylber recipe's first stage distils from (spokenlm/envelope.py); Sylber then segments its own features.")
    print("\nThe issue's \"boundaries within 50 ms of forced-alignment word boundaries at least 70 % of the time\" "
          "is reported as the recall; chance = as many boundaries as Sylber placed, uniform over each clip.\n")  # fmt: skip

    # 3. the DinoSR recipe's own held-out figures
    ssl = ssl_run_summary(args.ssl_run) if args.ssl_run else None
    if ssl:
        state = "finished" if ssl["finished"] else "unfinished: read from metrics.jsonl"
        print(f"## DinoSR recipe ({args.ssl_run}, {state}, step {ssl['steps']})\n")
        print("| held-out | start | end |\n|---|---:|---:|")
        print(f"| loss | {ssl['loss_start']} | {ssl['loss_end']} |")
        print(f"| codebook perplexity | {_fmt(ssl['perplexity_start'])} | {_fmt(ssl['perplexity_end'])} |")
        if ssl["loss_chance"] is not None:
            print(f"\nchance loss (uniform over the codebook): {ssl['loss_chance']}")
        print()

    # the "Done when" learning criteria, as measured here
    checks = [
        ("probes beat random init (ratio > 1)", p_acc > r_acc),
        ("Sylber 3-7 segments per second", 3.0 <= seg.segments_per_second <= 7.0),
        *((f"boundary recall within 50 ms >= 0.70 ({REFERENCES[g.reference]})", g.score.recall >= 0.70)
          for g in agreements),
    ]
    if ssl:
        ppl_end = ssl["perplexity_end"] or []
        checks += [("DinoSR held-out loss falls", ssl["loss_end"] < ssl["loss_start"]),
                   ("codebook perplexity well above 1 (min > 2)", bool(ppl_end) and min(ppl_end) > 2)]  # fmt: skip
    print("| issue-3 learning criterion | met |\n|---|---|")
    for what, ok in checks:
        print(f"| {what} | {'yes' if ok else 'NO'} |")
    print()

    result = {
        "utterances": len(clips),
        "audio_minutes": round(seconds / 60, 2),
        "probe_best_pretrained": round(p_acc, 4),
        "probe_best_layer_pretrained": p_layer,
        "probe_best_random": round(r_acc, 4),
        "probe_best_layer_random": r_layer,
        "probe_majority": round(majority, 4),
        "segments_per_s": round(seg.segments_per_second, 3),
    }
    for g in agreements:
        result.update({f"{g.reference}_utterances": g.clips, f"{g.reference}_words_per_s": round(g.words_per_second, 3),
                       f"{g.reference}_recall_50ms": round(g.score.recall, 4),
                       f"{g.reference}_precision_50ms": round(g.score.precision, 4),
                       f"{g.reference}_chance_recall_50ms": round(g.chance_recall, 4)})  # fmt: skip
    result["envelope_segments_per_s"] = round(envelope.segments_per_second, 3)
    for g in envelope_agreements:
        result[f"envelope_{g.reference}_recall_50ms"] = round(g.score.recall, 4)
    if ssl:
        result.update(ssl_loss_start=ssl["loss_start"], ssl_loss_end=ssl["loss_end"],
                      ssl_ppl_min=min(ssl["perplexity_end"] or [float("nan")]))  # fmt: skip
    result["ratio"] = round(p_acc / r_acc, 4)
    if args.out:
        out = Path(args.out)
        reports["pretrained"].plot(out / "probe_pretrained.png")
        reports["random-init"].plot(out / "probe_random_init.png")
        detail = {**result, "ssl_run": ssl, "probes": {k: [asdict(p) for p in r.layers] for k, r in reports.items()},
                  "boundary_counts": {g.reference: asdict(g.score) for g in agreements},
                  "frame_shift_s": {"sylber": seg.shift_s, "ctc": ctc_shift, "hmm": PocketsphinxAligner.FRAME_SHIFT_S}}  # fmt: skip
        (out / "ssl_learning.json").write_text(json.dumps(detail, indent=2) + "\n")
        print(f"wrote {out / 'probe_pretrained.png'}, {out / 'probe_random_init.png'}, {out / 'ssl_learning.json'}\n")
    print("bench ssl-learning: " + " ".join(f"{k}={v}" for k, v in result.items()))
    return result


if __name__ == "__main__":
    main()
