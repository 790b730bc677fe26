"""Issue 15 item 3: the default bundle and its baselines on the same clips, in one report.

    spokenlm bench default [--model models/default] [--manifest M ...] [--split test]
                           [--items-per-task 100] [--asr-items 0] [--tasks all|asr,translate,...] [--fsdd-items 100]
                           [--tsv LIBRIVOX_TSV ...]
                           [--skip-ours] [--skip-peers] [--skip-cascade]
                           [--whisper DIR] [--cascade-asr faster-whisper|whisper] [--cascade-llm DIR]
                           [--batch 8] [--max-new-tokens N] [--threads 2] [--json OUT]

What is measured (all on the same items, all in this process, one system after another):
- ours: a bundle (``--model``; default models/default when it holds one, else none and the report
  says so; ``--skip-ours`` leaves it out), ``SpeechLM.run`` greedy, batches of --batch items of one
  task sorted by duration. Its CTC head's transcript (``RunOutput.transcript``) is scored as ASR too
  (``ctc_wer``), so a report shows what the LLM adds.
- pocketsphinx (its US-English model) and faster-whisper tiny.en (int8, beam 5, no VAD): the ASR
  baselines (spokenlm/peers.py), one clip at a time; ``--skip-peers`` leaves them out.
- the naive cascade a user could assemble from the same parts, for every task but ASR: the Whisper
  tiny.en transcript as Whisper writes it, cased and punctuated (``--cascade-asr``: faster-whisper as
  above, or ``WhisperPeer`` greedy through transformers, batched) given as text to SmolLM2-135M-Instruct (``--cascade-llm``; default the
  pinned base) with the zero-shot prompt of ``CASCADE_PROMPTS`` (written once from the task
  definitions, not tuned on any split; no training), greedy, batched; its reply is read by the same
  ``spokenlm.tasks.parse_output`` as ours. ``--skip-cascade`` leaves it out.

Items (``spokenlm.recipes.speechlm``, the recipe's own held-out logic):
- the --split utterances of the manifests (default ../corpus/manifest.jsonl, the synthetic corpus:
  its test split holds sentences and voice settings never used in training, and
  ../corpus-fsdd/manifest.jsonl; a default one that does not exist yet is skipped with a note),
  FSDD ids (``fsdd_``) set apart; per task ``heldout_items``: the first --items-per-task items in
  id-hash order (a fixed sample, the same on every run), but for ASR --asr-items, by default all of
  them: ASR is cheap to score, and the test split's first 100 (WER 12.6 % for the stop-32 part, 8.6 on
  all 1,010) are no fair sample of its voices;
- "fsdd": the FSDD recordings of that split (real people saying one digit, never trained on),
  ``--fsdd-items`` of them in the same id-hash order;
- "librivox": every row of each ``--tsv`` (``file<TAB>transcript``; default the LibriVox smoke set,
  real read speech, never trained on).

Metrics (``score_task``: SLUE's definitions, percent): ASR WER, NER micro-F1 on the combined tags,
sentiment macro-F1, dialog-act accuracy (exact set match), en->es BLEU (sacrebleu), QA token F1
(SQuAD), summary ROUGE-L; each row also lists the task's other numbers, and for sentiment and dialog
acts ``unparsed``: the share of replies in which the parser found no label at all. Every system's output is put
in the written form of our references before scoring, the same for all: transcripts and entity
phrases through ``spokenlm.data.text.normalize`` (lower case, no punctuation; the peers already
return that form). The headline WER is then SLUE's (``normalize_asr_text``); ``wer_enf`` beside it
is the WER after ``english_normal_form`` on both sides (Whisper's English normalizer, bench/pipeline's
measure: "Mr." = "mister", "25" = "twenty five"), which does not count a recognizer's choice of
written form as an error. FSDD digit accuracy: the normalized transcript equals the digit word
(``acc_enf``: equal after ``english_normal_form``, so "8" counts as "eight"). The test split's ASR WER
is also given per voice group (``voice_group``: engine, seen or held-out setting), every recognizer
beside the others, in a table and under "asr_by_voice" in the JSON.

The last line (percent everywhere; absent numbers are ``none``):

    bench default: asr_wer=.. ner_f1=.. sentiment_f1=.. da_acc=.. bleu=.. qa_f1=.. rougeL=..
        librivox_wer=.. fsdd_acc=.. pocketsphinx_asr_wer=.. ... faster_whisper_fsdd_acc=..
        cascade_ner_f1=.. ... cascade_rougeL=.. tasks_beating_cascade=K/N ratio_is=.. ratio=..

(on one line). The first nine keys are ours; without a bundle ``ours=none`` takes their place.
``tasks_beating_cascade``: of the N non-ASR tasks that both ours and the cascade were scored on (6
on the full corpus), the K where ours is better on the headline metric. ``ratio`` is that fraction
K/N (``ratio_is=tasks_beating_cascade``); without the cascade it is pocketsphinx's test WER over ours
(``ratio_is=pocketsphinx_wer/ours_wer``, > 1: ours is better); with neither comparison ``nan``.
Wall seconds per system exclude loading (listed apart); a clip the cascade's recognizer already
transcribed for the faster-whisper row is not decoded twice, but its seconds count for both.
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import math
import sys
import time
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_BUNDLE = REPO / "models" / "default"
DEFAULT_MANIFESTS = (REPO.parent / "corpus" / "manifest.jsonl", REPO.parent / "corpus-fsdd" / "manifest.jsonl")
DEFAULT_TSV = REPO.parent / "shared" / "data" / "speech" / "librivox_smoke" / "manifest.tsv"
FSDD_PREFIX = "fsdd_"  # ids of the FSDD recordings (`spokenlm data fsdd`)

SYSTEMS = ("ours", "pocketsphinx", "faster_whisper", "cascade")
TEST, FSDD, LIBRIVOX = "test", "fsdd", "librivox"  # the item sets; TEST is named after --split in the report

# Issue 15 item 3's "done when", per (set, task): (metric key, "<=" or ">=", value in percent); None: reported only.
TARGETS: dict[tuple[str, str], tuple[str, str, float] | None] = {
    (TEST, "asr"): ("wer", "<=", 10.0),
    (TEST, "ner"): ("f1_combined", ">=", 60.0),
    (TEST, "sentiment"): ("macro_f1", ">=", 70.0),
    (TEST, "dialog-act"): ("accuracy", ">=", 80.0),
    (TEST, "translate"): ("bleu", ">=", 20.0),
    (TEST, "qa"): None,
    (TEST, "summarize"): None,
    (LIBRIVOX, "asr"): ("wer", "<=", 15.0),
    (FSDD, "asr"): ("accuracy", ">=", 90.0),
}
# the last line's key for each (set, task) of ours; baselines get "<system>_" before it
LINE_KEYS: dict[tuple[str, str], str] = {
    (TEST, "asr"): "asr_wer", (TEST, "ner"): "ner_f1", (TEST, "sentiment"): "sentiment_f1",
    (TEST, "dialog-act"): "da_acc", (TEST, "translate"): "bleu", (TEST, "qa"): "qa_f1",
    (TEST, "summarize"): "rougeL", (LIBRIVOX, "asr"): "librivox_wer", (FSDD, "asr"): "fsdd_acc",
}  # fmt: skip

# Tokens generated per item at most, per task, for ours and the cascade alike (--max-new-tokens caps
# them all): room for the longest reference of the corpus's templates, not more, since a model that
# rambles to the limit costs the most time on 2 CPU cores.
MAX_NEW_TOKENS = {
    "asr": 160, "ner": 192, "translate": 160, "summarize": 96, "qa": 32, "sentiment": 16, "dialog-act": 32,
}  # fmt: skip

# The naive cascade's zero-shot prompts: one user turn each for SmolLM2-135M-Instruct (its chat
# template adds the turn markers), asking for the output format our parsers read
# (spokenlm.tasks.parse_output). Written once from the task definitions in spokenlm/tasks.py and
# spokenlm/data/templates.py (SLUE's label sets), never tuned on any split. {transcript} is the
# recognizer's transcript as Whisper writes it (cased, punctuated: what a user of it would pass on).
_NER_TAG_GLOSSARY = (
    "PERSON (people), NORP (nationalities, religious or political groups), FAC (buildings, airports, "
    "highways, bridges), ORG (companies, agencies, institutions), GPE (countries, cities, states), "
    "LOC (other locations: mountains, rivers, seas), PRODUCT (objects, vehicles, foods), EVENT (named "
    "hurricanes, battles, wars, sports events), WORK_OF_ART (titles of books, songs, films), LAW "
    "(named laws and treaties), LANGUAGE (any named language), DATE (dates, periods, years), TIME "
    "(times of day), PERCENT, MONEY, QUANTITY (measurements, weights, distances), ORDINAL (first, "
    "second, ...), CARDINAL (other numbers)"
)
CASCADE_PROMPTS: dict[str, str] = {
    "ner": (
        "Here is the transcript of a recording:\n{transcript}\n\n"
        "Copy the transcript word for word and mark every named entity inline as [TAG words], with TAG "
        f"one of: {_NER_TAG_GLOSSARY}. For example: i met [PERSON john smith] in [GPE paris] on "
        "[DATE monday]. Write only the tagged transcript."
    ),
    "sentiment": (
        "Here is the transcript of a recording:\n{transcript}\n\n"
        "What is the sentiment of the speaker? Answer Negative, Neutral or Positive, with one word only."
    ),
    "dialog-act": (
        "Here is the transcript of one turn of a call-centre conversation:\n{transcript}\n\n"
        "Which dialog acts does this turn perform? Choose one or more of: {dialog_acts}. "
        "Answer with the labels only, separated by commas."
    ),
    "translate": "Translate this English text into {lang}. Write only the translation.\n\n{transcript}",
    "qa": (
        "Here is the transcript of a recording:\n{transcript}\n\n"
        "Answer the question with a short phrase from the transcript. Question: {question}"
    ),
    "summarize": "Here is the transcript of a recording:\n{transcript}\n\nSummarize it in one sentence.",
}


# --------------------------------------------------------------------------------------------------
# Items


@dataclass(frozen=True)
class Sets:
    """The items to score: set name -> task -> items (spokenlm.recipes.speechlm.Item)."""

    items: dict[str, dict[str, list]]
    notes: list[str] = field(default_factory=list)

    def rows(self) -> list[tuple[str, str]]:
        return [(s, t) for s, by_task in self.items.items() for t, items in by_task.items() if items]

    def asr_rows(self) -> list[tuple[str, str]]:
        return [row for row in self.rows() if row[1] == "asr"]

    def utterances(self, rows) -> list:
        """The distinct utterances of `rows`' items, in first-seen order."""
        seen: dict[str, object] = {}
        for s, t in rows:
            for item in self.items[s][t]:
                seen.setdefault(item.utt.id, item.utt)
        return list(seen.values())


def tsv_items(path: Path) -> list:
    """One ASR item per row of a ``file<TAB>transcript`` TSV (file relative to the TSV)."""
    import soundfile as sf

    from spokenlm.data.text import normalize
    from spokenlm.recipes.speechlm import items_of
    from spokenlm.train.data import Utterance

    with path.open(newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    if rows and not {"file", "transcript"} <= set(rows[0]):
        raise ValueError(f"{path}: expected columns file and transcript, got {sorted(rows[0])}")
    out = []
    for r in rows:
        audio = path.parent / r["file"]
        utt = Utterance(id=f"{path.parent.name}/{r['file']}", split=LIBRIVOX, audio=audio,
                        duration_s=sf.info(str(audio)).duration, labels={"text": normalize(r["transcript"])})  # fmt: skip
        out += items_of(utt, "asr")
    return out


def load_sets(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Sets:
    from spokenlm.recipes.speechlm import heldout_items
    from spokenlm.train.data import read_manifest

    notes = [f"default TSV {DEFAULT_TSV} does not exist: no LibriVox rows"] if args.tsv_defaulted and not args.tsv else []
    manifests = list(args.manifest)
    if args.manifest_defaulted:
        missing = [m for m in manifests if not m.is_file()]
        notes += [f"default manifest {m} does not exist (yet): left out" for m in missing]
        manifests = [m for m in manifests if m.is_file()]
    for m in manifests:
        if not m.is_file():
            parser.error(f"--manifest {m}: no such file")
    utts = read_manifest(manifests) if manifests else []
    chosen = [u for u in utts if u.split == args.split]
    if manifests and not chosen:
        found = sorted({u.split for u in utts})
        where = ", ".join(map(str, manifests))
        parser.error(f"no {args.split!r} utterances in {where} (splits there: {', '.join(found) or 'none'})")
    fsdd = [u for u in chosen if u.id.startswith(FSDD_PREFIX)]
    synthetic = [u for u in chosen if not u.id.startswith(FSDD_PREFIX)]
    asr = "asr" in args.tasks
    limit = {"asr": args.asr_items}  # the first N of each task's items in id-hash order (0: all)
    every = heldout_items(synthetic, 0) if synthetic else {}
    items = {
        TEST: {t: v[:n] if (n := limit.get(t, args.items_per_task)) else v for t, v in every.items() if t in args.tasks},
        FSDD: {"asr": heldout_items(fsdd, args.fsdd_items)["asr"]} if asr and fsdd and args.fsdd_items else {},
        LIBRIVOX: {"asr": [i for tsv in args.tsv for i in tsv_items(tsv)]} if asr and args.tsv else {},
    }
    if not any(items.values()):
        parser.error("no items: give --manifest (with utterances of --split) and/or --tsv")
    return Sets(items=items, notes=notes)


class AudioStore:
    """16 kHz mono waveforms (S,) of utterances, loaded once."""

    def __init__(self) -> None:
        self._wavs: dict[str, torch.Tensor] = {}

    def __call__(self, utt) -> torch.Tensor:
        from spokenlm.audio import load_audio

        if utt.id not in self._wavs:
            self._wavs[utt.id] = load_audio(utt.audio)
        return self._wavs[utt.id]


# --------------------------------------------------------------------------------------------------
# Systems


@dataclass
class SystemRun:
    """One system's results: per (set, task) the parsed result of every item, and what it cost."""

    name: str
    results: dict[tuple[str, str], list] = field(default_factory=dict)  # TaskResult per item, item order
    extra: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)  # more metrics of a row
    load_s: float = 0.0
    run_s: float = 0.0
    how: str = ""
    notes: list[str] = field(default_factory=list)
    transcripts: dict[str, str] = field(default_factory=dict)  # the cascade: utterance id -> what its LLM read


def task_limit(task: str, args: argparse.Namespace) -> int:
    return min(MAX_NEW_TOKENS[task], args.max_new_tokens) if args.max_new_tokens else MAX_NEW_TOKENS[task]


def run_ours(args: argparse.Namespace, sets: Sets, audio: AudioStore) -> SystemRun:
    """The bundle on every row: one task per batch, --batch items sorted by duration, greedy."""
    from spokenlm.lm import GenerationConfig
    from spokenlm.model import load_bundle

    run = SystemRun("ours", how=f"{args.model}, greedy, batches of {args.batch}")
    t0 = time.perf_counter()
    model = load_bundle(args.model)
    run.load_s = time.perf_counter() - t0
    if getattr(getattr(model, "info", None), "trained", None) is False:
        run.notes.append(f"{args.model} is UNTRAINED (random weights): its numbers are meaningless")
    for row in sets.rows():
        items = sets.items[row[0]][row[1]]
        order = sorted(range(len(items)), key=lambda k: items[k].utt.duration_s)  # little padding
        results, ctc = [None] * len(items), [None] * len(items)
        config = GenerationConfig(strategy="greedy", max_new_tokens=task_limit(row[1], args))
        t0 = time.perf_counter()
        for first in range(0, len(order), args.batch):
            batch = order[first : first + args.batch]
            outputs = model.run([audio(items[k].utt) for k in batch], [items[k].request for k in batch], config)
            for k, out in zip(batch, outputs):
                results[k], ctc[k] = out.result, out.transcript
        run.run_s += time.perf_counter() - t0
        run.results[row] = results
        if row[1] == "asr" and all(t is not None for t in ctc):  # the CTC head's own transcript, as ASR
            run.extra[row] = {"ctc_wer": asr_scores(items, [plain_transcript(t) for t in ctc])["wer"]}
    del model
    gc.collect()
    return run


class Transcriber:
    """One ASR peer and what it has transcribed, each clip decoded once whoever asks: the transcript as
    the recognizer wrote it (``raw``; Whisper's is cased and punctuated) and normalized as our
    references (``texts``, what the ASR rows score), with the decoding seconds of each clip."""

    def __init__(self, name: str, peer, batch: int) -> None:
        self.name, self.peer, self.batch = name, peer, batch
        self.texts: dict[str, str] = {}
        self.raw: dict[str, str] = {}
        self.seconds: dict[str, float] = {}

    def __call__(self, utts: list, audio: AudioStore) -> list[str]:
        """The normalized transcripts of `utts`, in order."""
        todo = [u for u in dict((u.id, u) for u in utts).values() if u.id not in self.texts]
        step = self.batch if hasattr(self.peer, "decode") else 1  # WhisperPeer batches; the others cannot
        for first in range(0, len(todo), step):
            group = todo[first : first + step]
            wavs = [audio(u) for u in group]
            t0 = time.perf_counter()
            raw = self._written(wavs)
            share = (time.perf_counter() - t0) / len(group)
            for u, text in zip(group, raw):
                self.raw[u.id], self.texts[u.id], self.seconds[u.id] = text, plain_transcript(text), share
        return [self.texts[u.id] for u in utts]

    def _written(self, wavs: list[torch.Tensor]) -> list[str]:
        from spokenlm.peers import FasterWhisper, WhisperPeer

        if isinstance(self.peer, WhisperPeer):
            return [d.text for d in self.peer.decode(wavs)]
        if isinstance(self.peer, FasterWhisper):
            # FasterWhisper.transcribe's own call (same settings), keeping the written form it normalizes away
            (wav,) = wavs
            segments, _ = self.peer.model.transcribe(wav.numpy(), language=self.peer.language,
                                                     beam_size=self.peer.beam_size, vad_filter=self.peer.vad_filter)  # fmt: skip
            return [" ".join(seg.text.strip() for seg in segments)]  # a generator: decoding happens here
        return [self.peer.transcribe(w) for w in wavs]  # pocketsphinx: lower case words already


def make_transcriber(name: str, args: argparse.Namespace) -> tuple[Transcriber, float, str]:
    """(transcriber, load seconds, how it decodes) of "pocketsphinx", "faster_whisper" or "whisper"."""
    from spokenlm.peers import FasterWhisper, Pocketsphinx, WhisperPeer

    t0 = time.perf_counter()
    if name == "pocketsphinx":
        peer, how = Pocketsphinx(), "its US-English model, one clip at a time"
    elif name == "faster_whisper":
        peer = FasterWhisper(args.whisper, compute_type="int8", beam_size=5, cpu_threads=args.threads)
        how = "int8, beam 5, no VAD, one clip at a time"
    else:
        peer = WhisperPeer(args.whisper, num_beams=1, batch_size=args.batch)
        how = f"WhisperPeer: through transformers, fp32, greedy, batches of {args.batch}"
    return Transcriber(name, peer, args.batch), time.perf_counter() - t0, how


def run_peer(transcriber: Transcriber, load_s: float, how: str, sets: Sets, audio: AudioStore) -> SystemRun:
    from spokenlm.tasks import Transcript

    run = SystemRun(transcriber.name, load_s=load_s, how=how)
    for row in sets.asr_rows():
        utts = [i.utt for i in sets.items[row[0]][row[1]]]
        run.results[row] = [Transcript(text=t, raw=t) for t in transcriber(utts, audio)]
        run.run_s += sum(transcriber.seconds[u.id] for u in dict((u.id, u) for u in utts).values())
    return run


def cascade_prompt(item, transcript: str) -> str:
    """The cascade's zero-shot prompt (CASCADE_PROMPTS) of one item, given its recognizer transcript."""
    from spokenlm.tasks import DIALOG_ACTS, TARGET_LANGUAGES

    request = item.request
    return CASCADE_PROMPTS[request.task].format(
        transcript=transcript or "(nothing was recognized)",
        question=request.question or "",
        lang=TARGET_LANGUAGES.get(request.target_lang or "", ""),
        dialog_acts=", ".join(DIALOG_ACTS),
    )


def run_cascade(args: argparse.Namespace, sets: Sets, audio: AudioStore, transcriber: Transcriber,
                asr_load_s: float, asr_how: str) -> SystemRun:  # fmt: skip
    """Recognizer transcript -> zero-shot LLM prompt -> the same parser as ours, for every non-ASR row."""
    from spokenlm.lm import GenerationConfig, load_llm
    from spokenlm.tasks import parse_output

    rows = [row for row in sets.rows() if row[1] != "asr"]
    t0 = time.perf_counter()
    llm = load_llm(args.cascade_llm)
    llm.model.eval()
    run = SystemRun("cascade", load_s=asr_load_s + time.perf_counter() - t0,
                    how=f"{asr_how} -> {Path(args.cascade_llm).name}: zero-shot, greedy, batches of {args.batch}")  # fmt: skip
    utts = sets.utterances(rows)
    transcriber(utts, audio)
    run.transcripts = {u.id: transcriber.raw[u.id] for u in utts}
    asr_s = sum(transcriber.seconds[u.id] for u in utts)
    llm_s = 0.0
    for row in rows:
        items = sets.items[row[0]][row[1]]
        prompts = [cascade_prompt(i, run.transcripts[i.utt.id]) for i in items]
        order = sorted(range(len(items)), key=lambda k: len(prompts[k]))  # similar lengths: little left padding
        texts = [""] * len(items)
        config = GenerationConfig(strategy="greedy", max_new_tokens=task_limit(row[1], args))
        t0 = time.perf_counter()
        for first in range(0, len(order), args.batch):
            batch = order[first : first + args.batch]
            for k, out in zip(batch, llm.generate([prompts[k] for k in batch], config=config)):
                texts[k] = out.text
        llm_s += time.perf_counter() - t0
        run.results[row] = [parse_output(i.request, t) for i, t in zip(items, texts)]
    run.run_s = asr_s + llm_s
    run.notes.append(f"cascade: {asr_s:.1f} s recognizing {len(utts)} clips, {llm_s:.1f} s in the LLM")
    del llm
    gc.collect()
    return run


# --------------------------------------------------------------------------------------------------
# Scoring


def plain_transcript(text: str) -> str:
    from spokenlm.data.text import normalize

    return normalize(text or "")


def scoring_form(result):
    """A result in our references' written form (lower case, no punctuation): transcripts and
    entity phrases through ``normalize``; other results as they are. The same for every system."""
    from spokenlm.tasks import Entities, Transcript

    if isinstance(result, Transcript):
        return replace(result, text=plain_transcript(result.text))
    if isinstance(result, Entities):
        return replace(result, entities=tuple(replace(e, text=plain_transcript(e.text)) for e in result.entities))
    return result


def asr_scores(items: list, hyps: list[str]) -> dict[str, float]:
    """SLUE WER (score_task) and WER after english_normal_form on both sides, percent."""
    from spokenlm.peers import english_normal_form
    from spokenlm.recipes.speechlm import score_task
    from spokenlm.slue.metrics import word_error_rate
    from spokenlm.tasks import Transcript

    scores = score_task("asr", items, [Transcript(text=h) for h in hyps])
    refs = [english_normal_form(i.labels["text"]) for i in items]
    scores["wer_enf"] = word_error_rate(refs, [english_normal_form(h) for h in hyps]).wer
    return scores


def voice_group(utt) -> str:
    """The voice group of a synthetic clip, from its manifest `voice`: the engine, whether its setting is
    one training never used (the test split's held-out piper tempo band and espeak voice), and for
    held-out espeak the voice, e.g. "espeak held-out en-gb-x-gbcwmd+f3"; "other" without a voice."""
    voice = utt.voice or {}
    if "engine" not in voice:
        return "other"
    if not voice.get("held_out"):
        return f"{voice['engine']} seen"
    return f"{voice['engine']} held-out" + (f" {voice['voice']}" if voice["engine"] == "espeak" else "")


def asr_by_voice(items: list, hyps: list[str]) -> dict[str, dict[str, float]]:
    """SLUE WER (percent) per voice group (`voice_group`), with its items and reference words: where a
    recognizer's errors sit, since one group can carry most of a test WER."""
    from spokenlm.recipes.speechlm import score_task
    from spokenlm.tasks import Transcript

    groups: dict[str, list[int]] = {}
    for k, item in enumerate(items):
        groups.setdefault(voice_group(item.utt), []).append(k)
    out = {}
    for group, ks in sorted(groups.items()):
        scores = score_task("asr", [items[k] for k in ks], [Transcript(text=hyps[k]) for k in ks])
        out[group] = {"items": len(ks), "wer": scores["wer"], "reference_words": scores["reference_words"]}
    return out


def score_row(row: tuple[str, str], items: list, results: list) -> dict[str, float]:
    """The metrics of one (set, task) row, percent, with "items"."""
    from spokenlm.peers import english_normal_form
    from spokenlm.recipes.speechlm import score_task

    set_name, task = row
    results = [scoring_form(r) for r in results]
    if task != "asr":
        scores = {"items": len(items), **score_task(task, items, results)}
        if task in ("sentiment", "dialog-act"):  # replies in which the parser found no label at all
            empty = [r.label is None if task == "sentiment" else not r.acts for r in results]
            scores["unparsed"] = 100 * sum(empty) / len(items)
        return scores
    hyps = [r.text for r in results]
    scores = {"items": len(items), **asr_scores(items, hyps)}
    if set_name == FSDD:  # one digit word per clip
        refs = [i.labels["text"] for i in items]
        scores["accuracy"] = 100 * sum(h == r for h, r in zip(hyps, refs)) / len(items)
        same = [english_normal_form(h) == english_normal_form(r) for h, r in zip(hyps, refs)]
        scores["acc_enf"] = 100 * sum(same) / len(items)
    return scores


def headline_of(row: tuple[str, str]) -> tuple[str, bool]:
    """(metric key, higher is better) of a row."""
    from spokenlm.recipes.speechlm import HEADLINE

    return ("accuracy", True) if row[0] == FSDD else HEADLINE[row[1]]


METRIC_NAMES = {"wer": "SLUE WER %", "f1_combined": "NER micro-F1, combined tags", "macro_f1": "macro-F1",
                "accuracy": "accuracy %", "bleu": "BLEU (sacrebleu)", "f1": "token F1 (SQuAD)", "rougeL": "ROUGE-L"}  # fmt: skip


def met(row: tuple[str, str], value: float) -> str:
    target = TARGETS.get(row)
    if target is None:
        return "reported"
    _, op, bound = target
    ok = value <= bound if op == "<=" else value >= bound
    return f"{'≤' if op == '<=' else '≥'} {bound:g}: {'met' if ok else 'NOT met'}"


def output_record(item, result) -> dict:
    """One item's output for --json: what was asked, the reference, what the system wrote."""
    raw = getattr(result, "raw", "") or getattr(result, "text", "") or ""
    record = {"id": item.utt.id, "reference": item.target, "output": raw}
    if item.request.question:
        record["question"] = item.request.question
    return record


# --------------------------------------------------------------------------------------------------
# The report


def parse_args(argv: list[str] | None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    parser = argparse.ArgumentParser(prog="spokenlm bench default", description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="a bundle dir (default: models/default if it is one)")
    parser.add_argument("--manifest", type=Path, nargs="+", default=None,
                        help=f"corpus manifests (default: {' '.join(str(m) for m in DEFAULT_MANIFESTS)})")  # fmt: skip
    parser.add_argument("--split", default="test")
    parser.add_argument("--items-per-task", type=int, default=100, help="per task but ASR, of the split (0: all)")
    parser.add_argument("--asr-items", type=int, default=0,
                        help="ASR items of the split (default 0: all; issue 15's ASR bar is on the whole test split)")  # fmt: skip
    parser.add_argument("--tasks", default="all",
                        help="comma list of the tasks scored (default all); without asr no FSDD or LibriVox rows")  # fmt: skip
    parser.add_argument("--fsdd-items", type=int, default=100, help="FSDD recordings of the split (0: none)")
    parser.add_argument("--tsv", type=Path, nargs="*", default=None,
                        help="file<TAB>transcript TSVs of real speech (default: LibriVox smoke; --tsv alone: none)")
    parser.add_argument("--skip-ours", action="store_true", help="leave the bundle out even if models/default holds one")
    parser.add_argument("--skip-peers", action="store_true", help="leave out pocketsphinx and faster-whisper")
    parser.add_argument("--skip-cascade", action="store_true", help="leave out the Whisper -> SmolLM2 cascade")
    parser.add_argument("--whisper", type=Path, default=None,
                        help="CTranslate2 Whisper dir of faster-whisper and the cascade (default: the tiny.en base)")
    parser.add_argument("--cascade-asr", choices=("faster-whisper", "whisper"), default="faster-whisper",
                        help="the cascade's recognizer: faster-whisper (int8, beam 5) or WhisperPeer (greedy)")
    parser.add_argument("--cascade-llm", type=Path, default=None,
                        help="the cascade's LLM: an HF causal-LM dir or GGUF file (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--batch", type=int, default=8, help="items per batch (ours, the cascade's LLM, WhisperPeer)")
    parser.add_argument("--max-new-tokens", type=int, default=0, help="caps every task's limit (MAX_NEW_TOKENS); 0: no cap")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads; faster-whisper's cpu_threads")
    parser.add_argument("--show", type=int, default=1, help="example outputs printed per row")
    parser.add_argument("--json", type=Path, default=None, help="write every score, output and timing here")
    args = parser.parse_args(argv)
    if args.batch < 1 or args.threads < 1:
        parser.error(f"--batch and --threads must be positive, got {args.batch} and {args.threads}")
    for name in ("items_per_task", "asr_items", "fsdd_items", "max_new_tokens", "show"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    from spokenlm.tasks import TASK_NAMES

    args.tasks = TASK_NAMES if args.tasks == "all" else tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    unknown = [t for t in args.tasks if t not in TASK_NAMES]
    if unknown or not args.tasks:
        parser.error(f"--tasks: unknown task(s) {unknown or 'none given'}; expected a comma list of {', '.join(TASK_NAMES)} or all")
    args.manifest_defaulted = args.manifest is None
    args.manifest = list(DEFAULT_MANIFESTS) if args.manifest is None else args.manifest
    args.tsv_defaulted = args.tsv is None
    args.tsv = ([DEFAULT_TSV] if DEFAULT_TSV.is_file() else []) if args.tsv is None else args.tsv
    for tsv in args.tsv:
        if not tsv.is_file():
            parser.error(f"--tsv {tsv}: no such file")
    if args.skip_ours and args.model is not None:
        parser.error("--skip-ours leaves the bundle out: give --model or --skip-ours, not both")
    if args.model is not None and not (args.model / "spokenlm.json").is_file():
        parser.error(f"--model {args.model}: no spokenlm.json there, so not a bundle")
    return parser, args


def set_label(split: str, set_name: str) -> str:
    """How a set is named in the report: the synthetic one by its split (test, dev, ...)."""
    return split if set_name == TEST else set_name


def fmt(value: float | None) -> str:
    return "none" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"


def run_systems(args: argparse.Namespace, sets: Sets, audio: AudioStore, notes: list[str]) -> dict[str, SystemRun]:
    """Each system in turn, its models freed before the next loads (ours, the peers, the cascade)."""
    runs: dict[str, SystemRun] = {}
    if args.model is not None:
        print("running ours ...", flush=True)
        runs["ours"] = run_ours(args, sets, audio)
    shared: dict[str, tuple[Transcriber, float, str]] = {}  # faster-whisper's transcripts serve the cascade too
    if not args.skip_peers:
        for name in ("pocketsphinx", "faster_whisper"):
            print(f"running {name} ...", flush=True)
            shared[name] = make_transcriber(name, args)
            runs[name] = run_peer(*shared[name], sets, audio)
        del shared["pocketsphinx"]
    if not args.skip_cascade and any(t != "asr" for _, t in sets.rows()):
        print("running the cascade ...", flush=True)
        asr = "faster_whisper" if args.cascade_asr == "faster-whisper" else "whisper"
        runs["cascade"] = run_cascade(args, sets, audio, *(shared.get(asr) or make_transcriber(asr, args)))
    elif not args.skip_cascade:
        notes.append("the items hold no task but ASR: no cascade rows")
    return runs


def compare_to_cascade(scores: dict[str, dict]) -> dict[str, bool]:
    """Task -> whether ours is better than the cascade on the task's headline metric (ties are not)."""
    beats: dict[str, bool] = {}
    for row in scores.get("cascade", {}):
        if row in scores.get("ours", {}):
            key, higher = headline_of(row)
            a, b = scores["ours"][row][key], scores["cascade"][row][key]
            beats[row[1]] = a > b if higher else a < b
    return beats


def print_report(args, sets: Sets, runs: dict[str, SystemRun], scores: dict[str, dict], beats: dict[str, bool],
                 notes: list[str], by_voice: dict[str, dict]) -> None:  # fmt: skip
    label = partial(set_label, args.split)
    print(f"\n| set | task | system | metric | value | target | items | other metrics |\n|{'---|' * 8}")
    for row in sets.rows():
        key, _ = headline_of(row)
        for name in (n for n in SYSTEMS if row in scores.get(n, {})):
            s = scores[name][row]
            target = met(row, s[key]) if name == "ours" else ""
            if name == "ours" and row[1] in beats:
                target += f"; {'beats' if beats[row[1]] else 'does NOT beat'} the cascade"
            other = " ".join(f"{k}={v:.2f}" for k, v in s.items() if k not in (key, "items", "reference_words"))
            metric = "digit accuracy %" if row[0] == FSDD else METRIC_NAMES[key]
            print(f"| {label(row[0])} | {row[1]} | {name} | {metric} | {s[key]:.2f} | {target} | {s['items']} | {other} |")

    print("\n| system | load s | run s | rows | how |\n|---|---|---|---|---|")
    for name, run in runs.items():
        print(f"| {name} | {run.load_s:.1f} | {run.run_s:.1f} | {len(run.results)} | {run.how} |")
    for row in (r for r in sets.rows() if any(r in run.results for run in runs.values())):
        items = sets.items[row[0]][row[1]]
        for k in range(min(args.show, len(items))):
            print(f"  {label(row[0])}/{row[1]} {items[k].utt.id}\n    reference: {items[k].target}")
            for name, run in ((n, r) for n, r in runs.items() if row in r.results):
                print(f"    {name}: {output_record(items[k], run.results[row][k])['output']}")
    if by_voice:
        names = list(by_voice)
        print(f"\n{label(TEST)}/asr WER % by voice group (items):\n| voice | {' | '.join(names)} |\n|{'---|' * (len(names) + 1)}")
        for group in sorted({g for table in by_voice.values() for g in table}):
            cells = [by_voice[n].get(group) for n in names]
            print(f"| {group} | " + " | ".join(f"{c['wer']:.2f} ({c['items']})" if c else "" for c in cells) + " |")
    for note in notes:
        print(f"note: {note}")


def voice_tables(sets: Sets, runs: dict[str, SystemRun]) -> dict[str, dict]:
    """Per system that read the test split's ASR items, `asr_by_voice` of its transcripts."""
    row = (TEST, "asr")
    items = sets.items.get(TEST, {}).get("asr", [])
    return {name: asr_by_voice(items, [scoring_form(r).text for r in run.results[row]])
            for name, run in runs.items() if row in run.results}  # fmt: skip


def last_line_fields(scores: dict[str, dict], beats: dict[str, bool], with_ours: bool) -> list[str]:
    """The key=value fields of the last line (see the module docstring)."""

    def value(name: str, row: tuple[str, str]) -> float | None:
        s = scores.get(name, {}).get(row)
        return None if s is None else s[headline_of(row)[0]]

    fields = [f"{LINE_KEYS[row]}={fmt(value('ours', row))}" for row in LINE_KEYS] if with_ours else ["ours=none"]
    for name in ("pocketsphinx", "faster_whisper"):
        fields += [f"{name}_{LINE_KEYS[row]}={fmt(value(name, row))}" for row in LINE_KEYS if row[1] == "asr"]
    fields += [f"cascade_{LINE_KEYS[row]}={fmt(value('cascade', row))}" for row in LINE_KEYS if row[1] != "asr"]
    won = sum(beats.values())
    ours_wer, peer_wer = value("ours", (TEST, "asr")), value("pocketsphinx", (TEST, "asr"))
    if beats:
        ratio_is, ratio = "tasks_beating_cascade", won / len(beats)
    elif ours_wer and peer_wer is not None:  # a WER of 0 has no ratio
        ratio_is, ratio = "pocketsphinx_wer/ours_wer", peer_wer / ours_wer
    else:
        ratio_is, ratio = "none", float("nan")
    return fields + [f"tasks_beating_cascade={f'{won}/{len(beats)}' if beats else 'none'}", f"ratio_is={ratio_is}",
                     f"ratio={'nan' if math.isnan(ratio) else f'{ratio:.3f}'}"]  # fmt: skip


def json_report(args, sets: Sets, runs: dict[str, SystemRun], scores: dict[str, dict], beats: dict[str, bool],
                notes: list[str], fields: list[str], by_voice: dict[str, dict]) -> dict:  # fmt: skip
    def key(row: tuple[str, str]) -> str:
        return f"{set_label(args.split, row[0])}/{row[1]}"

    label = partial(set_label, args.split)
    return {
        "bench": "default",
        "args": {k: (str(v) if isinstance(v, Path) else [str(x) for x in v] if isinstance(v, list) else v)
                 for k, v in vars(args).items()},  # fmt: skip
        "sets": {label(s): {t: len(items) for t, items in by_task.items()} for s, by_task in sets.items.items()},
        "targets": {
            key(row): None if v is None else {"metric": v[0], "op": v[1], "value": v[2]} for row, v in TARGETS.items()
        },
        "cascade_prompts": CASCADE_PROMPTS,
        "systems": {
            name: {
                "how": run.how, "load_s": run.load_s, "run_s": run.run_s, "notes": run.notes,
                **({"transcripts": run.transcripts} if run.transcripts else {}),
                "scores": {key(row): v for row, v in scores[name].items()},
                "outputs": {key(row): [output_record(i, r) for i, r in zip(sets.items[row[0]][row[1]], res)]
                            for row, res in run.results.items()},
            }  # fmt: skip
            for name, run in runs.items()
        },
        "beats_cascade": beats,
        "asr_by_voice": by_voice,
        "notes": notes,
        "last_line": dict(f.split("=", 1) for f in fields),
    }


def main(argv: list[str] | None = None) -> int:
    parser, args = parse_args(argv)
    torch.set_num_threads(args.threads)
    notes: list[str] = []
    if args.model is None and not args.skip_ours and (DEFAULT_BUNDLE / "spokenlm.json").is_file():
        args.model = DEFAULT_BUNDLE
    if args.model is None:
        why = "--skip-ours" if args.skip_ours else f"no bundle given and none at {DEFAULT_BUNDLE} (no trained bundle yet)"
        notes.append(f"{why}: the baselines only")
    if (not args.skip_peers or not args.skip_cascade) and args.whisper is None:
        from spokenlm.bases import WHISPER_TINY_EN, resolve_base

        args.whisper = resolve_base(WHISPER_TINY_EN)  # BaseError saying what to run when not fetched
    if not args.skip_cascade and args.cascade_llm is None:
        from spokenlm.bases import SMOLLM2_135M_INSTRUCT, resolve_base

        args.cascade_llm = resolve_base(SMOLLM2_135M_INSTRUCT)
    sets = load_sets(args, parser)
    notes += sets.notes
    audio = AudioStore()
    for utt in sets.utterances(sets.rows()):  # every clip is loaded before any timing
        audio(utt)

    runs = run_systems(args, sets, audio, notes)
    scores = {name: {row: score_row(row, sets.items[row[0]][row[1]], res) for row, res in run.results.items()}
              for name, run in runs.items()}  # fmt: skip
    for name, run in runs.items():
        for row, extra in run.extra.items():
            scores[name][row].update(extra)
        notes += run.notes
    if args.whisper is not None:
        notes.append(f"Whisper (faster-whisper and the cascade's recognizer): {args.whisper}")
    if "cascade" in runs:
        notes.append(f"the cascade's LLM: {args.cascade_llm}")
    beats = compare_to_cascade(scores)
    by_voice = voice_tables(sets, runs)
    print_report(args, sets, runs, scores, beats, notes, by_voice)
    fields = last_line_fields(scores, beats, with_ours="ours" in runs)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        report = json_report(args, sets, runs, scores, beats, notes, fields, by_voice)
        args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(f"bench default: {' '.join(fields)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
