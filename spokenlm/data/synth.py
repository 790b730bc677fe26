"""The synthetic speech corpus: plan utterances, speak them, write SLUE files and a multitask manifest.

`build_corpus(config, out_dir)` is the whole job (DESIGN.md §5); `synth_main(argv)` is its CLI
(`spokenlm data synth`). The corpus is planned before anything is spoken:

1. Streams. Text streams take sentences from ../shared/data/text (LJSpeech, Harvard, ARCTIC, the
   English side of the Tatoeba English–Spanish pairs, which also give the translation); template
   streams (`templates.py`) supply NER, sentiment, dialog-act and QA/summary labels. Each stream
   gets `mix` of the requested hours, estimated from text length; streams are interleaved by
   progress, so `--limit N` keeps the mix. Item k of a stream depends only on (seed, stream, k):
   a longer corpus extends a shorter one with the same ids.
2. Splits by sentence text: a hash of the normalized text picks fine-tune / dev / test, so one text
   never lands in two splits (and the split of a text does not depend on the seed).
3. Voices (`voices.py`): drawn per utterance from (seed, id); a share of the test split uses
   held-out settings that fine-tune and dev never see.

Output layout under out_dir (SLUE formats, Shon et al. 2022 and 2023; audio at 16 kHz mono):
    slue-voxpopuli/slue-voxpopuli_{fine-tune,dev,test}.tsv   NER stream; audio {split}/{id}.ogg
    slue-voxceleb/slue-voxceleb_{fine-tune,dev,test}.tsv     sentiment stream; audio {split}_raw/{id}.flac
    slue-hvb/slue-hvb_{fine-tune,dev,test}.tsv               dialog stream; audio {split}/{id}_0_{end_ms}.wav
    audio/{split}/{id}.flac                                  every other stream
    manifest.jsonl      one line per utterance: audio, duration, voice, task_labels, tasks
    stats.json, LICENSE-NOTES.md, synth_config.json

`task_labels` holds what `spokenlm.tasks.TASKS[name].target` reads: "text" (normalized transcript),
"entities" (SLUE [tag, start, length] over "text"; exhaustive only where "ner" is in "tasks"),
"sentiment", "dialog_acts", "translation" (with "target_lang"), "question"/"answer", "summary";
plus "raw_text", "raw_entities", "translations" (every reference), "answer_start" and "qa" (every
question of a passage, each with its answer span).

Resumable: audio is written to a temporary name and renamed; a rerun keeps every valid clip and
speaks only the missing ones. It never deletes files.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from spokenlm.audio import SAMPLE_RATE
from spokenlm.data.templates import TEMPLATE_STREAMS, LabelledText, derive_seed
from spokenlm.data.text import (
    TEXT_FILES,
    SourceSentence,
    load_text_source,
    map_span,
    normalize,
    normalize_with_map,
    text_dir,
)
from spokenlm.data.voices import VoiceConfig, VoiceSetting, espeak_voice_exists, sample_voice

FORMAT_VERSION = 1
SPLITS = ("fine-tune", "dev", "test")
CHARS_PER_SECOND = 16.0  # planning estimate: ~17 chars/s of speech (FEASIBILITY.md), less pauses and pads
MIN_AUDIO_S = 0.1
TRANSLATION_LANG = "es"  # the Tatoeba pairs read are English-Spanish (a key of tasks.TARGET_LANGUAGES)

# Which tasks each stream's utterances train; "ner" means the entity labels are exhaustive.
STREAM_TASKS: dict[str, tuple[str, ...]] = {
    "ljspeech": ("asr",),
    "harvard": ("asr",),
    "arctic": ("asr",),
    "tatoeba": ("asr", "translate"),
    "ner": ("asr", "ner"),
    "sentiment": ("asr", "sentiment"),
    "dialog": ("asr", "dialog-act"),
    "passage": ("asr", "ner", "qa", "summarize"),
}
STREAMS = tuple(STREAM_TASKS)
assert set(STREAMS) == set(TEXT_FILES) | set(TEMPLATE_STREAMS)
# Share of the requested hours per stream. Tatoeba is large and varied (ASR and en→es), LJSpeech
# long and literary; Harvard and ARCTIC are small and mostly used up at 20 h.
DEFAULT_MIX: tuple[tuple[str, float], ...] = (
    ("ljspeech", 0.18), ("harvard", 0.02), ("arctic", 0.03), ("tatoeba", 0.27),
    ("ner", 0.22), ("sentiment", 0.10), ("dialog", 0.08), ("passage", 0.10),
)  # fmt: skip


class CorpusError(RuntimeError):
    """The corpus cannot be built as asked (conflicting output folder, bad configuration, failures)."""


@dataclass(frozen=True, kw_only=True)
class SynthConfig:
    """What corpus to build. Fields below `data_dir` change how it is built, not what it holds."""

    seed: int = 0  # every text choice, template fill and voice setting follows from it
    hours: float = 20.0  # estimated audio to plan (the real total is within ~20%)
    limit: int | None = None  # keep only the first N planned utterances (tiny runs and tests)
    mix: tuple[tuple[str, float], ...] = DEFAULT_MIX  # (stream, share of hours); shares are normalized
    dev_fraction: float = 0.05  # of distinct sentence texts
    test_fraction: float = 0.05
    heldout_fraction: float = 0.5  # of test utterances, spoken with held-out voice settings
    max_repeats: int = 3  # template streams: how many times one text may recur (different voices)
    voices: VoiceConfig = field(default_factory=VoiceConfig)
    data_dir: Path | None = None  # the shared data folder; None: <repo>/../shared/data
    workers: int = 1  # synthesis processes, one onnxruntime thread each
    progress: bool = True  # tqdm progress bar on stderr

    def validate(self) -> None:
        if self.hours <= 0:
            raise ValueError(f"hours must be positive, got {self.hours}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be at least 1, got {self.limit}")
        unknown = [name for name, _ in self.mix if name not in STREAM_TASKS]
        if unknown:
            raise ValueError(f"unknown stream(s) {unknown} in mix; expected some of {', '.join(STREAMS)}")
        if any(share < 0 for _, share in self.mix) or sum(share for _, share in self.mix) <= 0:
            raise ValueError(f"mix shares must be non-negative with a positive sum, got {self.mix}")
        if min(self.dev_fraction, self.test_fraction) < 0 or self.dev_fraction + self.test_fraction >= 1:
            raise ValueError(
                f"dev_fraction {self.dev_fraction} and test_fraction {self.test_fraction} must be "
                "non-negative and leave room for fine-tune"
            )
        if not 0 <= self.heldout_fraction <= 1:
            raise ValueError(f"heldout_fraction must lie in [0, 1], got {self.heldout_fraction}")
        if self.max_repeats < 1:
            raise ValueError(f"max_repeats must be at least 1, got {self.max_repeats}")
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")
        self.voices.validate()

    def fingerprint(self) -> dict:
        """The fields that decide what a clip with a given id sounds like and what it is labelled;
        a rerun into the same folder must agree on them."""
        return {
            "format_version": FORMAT_VERSION, "seed": self.seed, "dev_fraction": self.dev_fraction,
            "test_fraction": self.test_fraction, "heldout_fraction": self.heldout_fraction,
            "max_repeats": self.max_repeats, "voices": _jsonable(asdict(self.voices)),
        }  # fmt: skip


def default() -> SynthConfig:
    """The corpus the default bundle trains on: ~20 h, both engines, augmentation on."""
    return SynthConfig()


def tiny(**overrides) -> SynthConfig:
    """A ~30-utterance corpus for tests: every stream, wide dev/test splits so all three are filled."""
    base = dict(hours=0.2, limit=30, dev_fraction=0.2, test_fraction=0.3, heldout_fraction=0.5, progress=False)
    return SynthConfig(**{**base, **overrides})


# --- the plan ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Utterance:
    """One planned clip: its text, labels and voice; nothing here depends on the audio."""

    id: str
    stream: str
    split: str
    raw_text: str  # spoken as written
    labels: LabelledText | SourceSentence
    voice: VoiceSetting

    @property
    def audio(self) -> str:
        """Path relative to the corpus folder. SLUE-HVB names a clip by its end time, known only once
        it is spoken: that path holds the placeholder `{end_ms}`."""
        if self.stream == "ner":
            return f"slue-voxpopuli/{self.split}/{self.id}.ogg"
        if self.stream == "sentiment":
            return f"slue-voxceleb/{self.split}_raw/{self.id}.flac"
        if self.stream == "dialog":
            return f"slue-hvb/{self.split}/{self.id}_0_{{end_ms}}.wav"
        return f"audio/{self.split}/{self.id}.flac"

    @property
    def tasks(self) -> tuple[str, ...]:
        tasks = STREAM_TASKS[self.stream]
        if isinstance(self.labels, LabelledText) and not self.labels.qa:
            tasks = tuple(t for t in tasks if t != "qa")
        return tasks

    def task_labels(self) -> dict:
        """Labels over the normalized text, keyed as `spokenlm.tasks.TASKS[...].target` reads them."""
        text, index = normalize_with_map(self.raw_text)
        out: dict = {"text": text, "raw_text": self.raw_text, "entities": [], "raw_entities": []}
        lab = self.labels
        if isinstance(lab, SourceSentence):
            if lab.translations:
                out["target_lang"] = TRANSLATION_LANG
                out["translation"] = lab.translations[0]
                out["translations"] = list(lab.translations)
            return out
        for tag, start, length in lab.entities:
            span = map_span(index, start, length)
            if span is not None:
                out["entities"].append([tag, span[0], span[1]])
                out["raw_entities"].append([tag, start, length])
        if lab.sentiment is not None:
            out["sentiment"] = lab.sentiment
        if lab.dialog_acts:
            out["dialog_acts"] = list(lab.dialog_acts)
        if lab.qa:
            qa = []
            for pair in lab.qa:
                start, length = map_span(index, pair.start, pair.length)
                answer = text[start : start + length]
                qa.append({"question": pair.question, "answer": answer, "answer_start": start})
            out["qa"] = qa
            out.update(question=qa[0]["question"], answer=qa[0]["answer"], answer_start=qa[0]["answer_start"])
        if lab.summary is not None:
            out["summary"] = lab.summary
        return out


def split_of(normalized_text: str, config: SynthConfig) -> str:
    """fine-tune / dev / test from a hash of the text alone: equal texts share a split in every corpus."""
    u = derive_seed("split", normalized_text) / 2.0**63
    if u < config.test_fraction:
        return "test"
    if u < config.test_fraction + config.dev_fraction:
        return "dev"
    return "fine-tune"


def _estimate_s(text: str) -> float:
    return 0.4 + len(text) / CHARS_PER_SECOND


_ID_PREFIX = {"ljspeech": "lj", "harvard": "harvard", "arctic": "arctic", "tatoeba": "tatoeba"}


def _stream_items(stream: str, config: SynthConfig, target_s: float) -> list[tuple[str, str, object]]:
    """(id, raw_text, labels) of one stream until `target_s` estimated seconds (or the source ends)."""
    items: list[tuple[str, str, object]] = []
    total = 0.0
    if stream in TEXT_FILES:
        sentences = load_text_source(stream, config.data_dir)
        # A seeded order that does not depend on how many are taken: prefixes are stable.
        keyed = sorted(sentences, key=lambda s: derive_seed(config.seed, stream, s.text))
        for k, sentence in enumerate(keyed):
            if total >= target_s:
                break
            items.append((f"{_ID_PREFIX[stream]}-{k:06d}", sentence.text, sentence))
            total += _estimate_s(sentence.text)
        return items
    make = TEMPLATE_STREAMS[stream]
    seen: Counter[str] = Counter()
    k, misses = 0, 0
    while total < target_s and misses < 2000:  # small template spaces run dry: stop, don't spin
        example = make(config.seed, k)
        key = normalize(example.text)
        if seen[key] < config.max_repeats:
            seen[key] += 1
            items.append((f"{stream}-{k:06d}", example.text, example))
            total += _estimate_s(example.text)
            misses = 0
        else:
            misses += 1
        k += 1
    return items


def plan_corpus(config: SynthConfig) -> list[Utterance]:
    """Every utterance of the corpus, in synthesis order, without speaking any. Deterministic."""
    config.validate()
    shares = {name: share for name, share in config.mix if share > 0}
    norm = sum(shares.values())
    budget_s = config.hours * 3600.0
    if any(s in TEXT_FILES for s in shares):
        text_dir(config.data_dir)  # fail early, with the folder named, when the shared data is absent
    keyed: list[tuple[float, int, str, str, object, str]] = []
    for order, (stream, share) in enumerate(shares.items()):
        target = budget_s * share / norm
        items = _stream_items(stream, config, target)
        stream_total = sum(_estimate_s(text) for _, text, _ in items) or 1.0
        done = 0.0
        for uid, text, labels in items:
            est = _estimate_s(text)
            # Interleave streams by progress through their own budget, so any prefix keeps the mix.
            keyed.append(((done + est / 2) / stream_total, order, uid, text, labels, stream))
            done += est
    keyed.sort(key=lambda item: (item[0], item[1]))
    if config.limit is not None:
        keyed = keyed[: config.limit]
    plan = []
    for _, _, uid, text, labels, stream in keyed:
        split = split_of(normalize(text), config)
        rng = random.Random(derive_seed(config.seed, "voice", uid))
        held_out = split == "test" and rng.random() < config.heldout_fraction
        voice = sample_voice(config.voices, rng, held_out=held_out)
        plan.append(Utterance(id=uid, stream=stream, split=split, raw_text=text, labels=labels, voice=voice))
    return plan


# --- synthesis -----------------------------------------------------------------------------------

_SYNTH = None  # the worker process's Synthesizer (piper loads once per process)


def _init_worker(voices: VoiceConfig) -> None:
    global _SYNTH
    import torch

    from spokenlm.data.voices import Synthesizer

    torch.set_num_threads(1)
    _SYNTH = Synthesizer(voices)


_FORMATS = {".ogg": ("OGG", "VORBIS"), ".flac": ("FLAC", "PCM_16"), ".wav": ("WAV", "PCM_16")}


def _speak_one(job: tuple[str, str, VoiceSetting, str]) -> tuple[str, str | None, float | None, str | None]:
    """Speak and write one clip atomically; (id, path written, duration_s, error)."""
    import soundfile as sf

    uid, text, voice, pattern = job
    try:
        wav = _SYNTH(text, voice)
        if len(wav) < MIN_AUDIO_S * SAMPLE_RATE:
            raise ValueError(f"only {len(wav)} samples")
        path = pattern.replace("{end_ms}", str(_end_ms(len(wav))))
        fmt, subtype = _FORMATS[os.path.splitext(path)[1]]
        tmp = f"{path}.tmp{os.getpid()}"
        os.makedirs(os.path.dirname(path), exist_ok=True)
        sf.write(tmp, wav, SAMPLE_RATE, format=fmt, subtype=subtype)
        os.replace(tmp, path)
        return uid, path, len(wav) / SAMPLE_RATE, None
    except Exception as error:  # one bad sentence must not stop a 20-hour run; it is reported
        return uid, None, None, f"{type(error).__name__}: {error}"


def _end_ms(samples: int) -> int:
    return int(round(samples * 1000 / SAMPLE_RATE))


def _existing_clip(out: Path, pattern: str) -> tuple[str, float] | None:
    """(relative path, duration) of a finished clip for `pattern`, or None."""
    if "{end_ms}" not in pattern:
        d = audio_duration(out / pattern)
        return None if d is None else (pattern, d)
    folder, name = os.path.split(pattern)
    for found in sorted((out / folder).glob(name.replace("{end_ms}", "*"))):
        d = audio_duration(found)
        rel = f"{folder}/{found.name}"
        if d is not None and rel == pattern.replace("{end_ms}", str(_end_ms(round(d * SAMPLE_RATE)))):
            return rel, d
    return None


def audio_duration(path: Path) -> float | None:
    """Duration of a finished clip, or None when it is missing or not 16 kHz mono audio."""
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except Exception:
        return None
    if info.samplerate != SAMPLE_RATE or info.channels != 1 or info.frames < MIN_AUDIO_S * SAMPLE_RATE:
        return None
    return info.frames / SAMPLE_RATE


# --- statistics ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CorpusStats:
    """What a build produced. Hours are of real audio; counts are utterances."""

    utterances: int
    hours: float
    hours_by_split: dict[str, float]
    hours_by_task: dict[str, float]  # an utterance counts towards each of its tasks
    hours_by_voice: dict[str, float]  # speaker ids: "piper-en_US-joe-medium", "espeak-en-gb+f3", ...
    hours_by_stream: dict[str, float]
    utterances_by_split: dict[str, int]
    heldout_hours: float  # test audio spoken with held-out voice settings
    synthesized: int  # spoken in this run
    reused: int  # already on disk and valid
    failed: tuple[str, ...]  # "id: error" of utterances that could not be spoken
    synthesized_hours: float
    wall_s: float

    @property
    def hours_per_minute(self) -> float:
        """Synthesis throughput of this run: new audio hours per wall minute."""
        return self.synthesized_hours / (self.wall_s / 60.0) if self.wall_s > 0 else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "failed": list(self.failed), "hours_per_minute": self.hours_per_minute}

    def __str__(self) -> str:
        def table(title: str, values: dict[str, float]) -> list[str]:
            ranked = sorted(values.items(), key=lambda kv: -kv[1])
            return [f"  {title}:"] + [f"    {k:<28} {v:8.3f} h" for k, v in ranked]

        lines = [
            f"corpus: {self.utterances} utterances, {self.hours:.3f} h of audio "
            f"({self.heldout_hours:.3f} h test with held-out voices)",
            f"  this run: {self.synthesized} spoken ({self.synthesized_hours:.3f} h), {self.reused} reused, "
            f"{len(self.failed)} failed, {self.wall_s:.0f} s wall, {self.hours_per_minute:.3f} h of audio per minute",
            *table("by split", self.hours_by_split),
            *table("by task", self.hours_by_task),
            *table("by stream", self.hours_by_stream),
            *table("by voice", self.hours_by_voice),
        ]
        return "\n".join(lines)


def _stats(plan: list[Utterance], durations: dict[str, float], synthesized: int, reused: int,
           failed: list[str], synthesized_s: float, wall_s: float) -> CorpusStats:  # fmt: skip
    by: dict[str, defaultdict[str, float]] = {k: defaultdict(float) for k in ("split", "task", "voice", "stream")}
    counts: Counter[str] = Counter()
    heldout = 0.0
    for u in plan:
        if u.id not in durations:
            continue
        h = durations[u.id] / 3600.0
        by["split"][u.split] += h
        by["voice"][u.voice.speaker_id] += h
        by["stream"][u.stream] += h
        for task in u.tasks:
            by["task"][task] += h
        counts[u.split] += 1
        heldout += h if u.voice.held_out else 0.0

    def r(hours: dict[str, float]) -> dict[str, float]:
        return {k: round(v, 4) for k, v in hours.items()}

    return CorpusStats(
        utterances=sum(counts.values()), hours=round(sum(by["split"].values()), 4),
        hours_by_split=r(by["split"]), hours_by_task=r(by["task"]), hours_by_voice=r(by["voice"]),
        hours_by_stream=r(by["stream"]), utterances_by_split=dict(counts), heldout_hours=round(heldout, 4),
        synthesized=synthesized, reused=reused, failed=tuple(failed),
        synthesized_hours=round(synthesized_s / 3600.0, 4), wall_s=round(wall_s, 1),
    )  # fmt: skip


# --- writers -------------------------------------------------------------------------------------

VOXPOPULI_COLUMNS = ("id", "raw_text", "normalized_text", "speaker_id", "split", "raw_ner", "normalized_ner")
VOXCELEB_COLUMNS = ("id", "normalized_text", "speaker_id", "split", "sentiment", "start_second", "end_second")
# SLUE phase 2 HVB (slue-toolkit prepare_hvb.py); each of our turns is a whole clip, starting at 0 ms.
HVB_COLUMNS = (
    "issue_id", "speaker_id", "text", "utt_index", "channel", "role", "start_ms", "duration_ms", "intent",
    "dialog_acts", "split",
)  # fmt: skip


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _tsv(columns: tuple[str, ...], rows: list[tuple]) -> str:
    lines = ["\t".join(columns)]
    for row in rows:
        cells = [str(c) for c in row]
        for c in cells:  # pandas would read a leading quote as CSV quoting; templates never write one
            if "\t" in c or "\n" in c or c.startswith('"'):
                raise CorpusError(f"cell {c!r} cannot be written to a SLUE TSV")
        lines.append("\t".join(cells))
    return "\n".join(lines) + "\n"


def _ner_literal(entities: list[list]) -> str:
    """SLUE's Python-literal NER column: [['GPE', 24, 6], ...], or None."""
    return repr([[tag, int(s), int(n)] for tag, s, n in entities]) if entities else "None"


# SLUE-HVB roles: who says what in a call to the bank (the agent opens, asks, instructs).
_AGENT_ACTS = frozenset((
    "statement_open", "question_general", "question_check", "statement_instruct", "self", "apology",
    "statement_close", "question_repeat",
))  # fmt: skip


def _write_outputs(out: Path, plan: list[Utterance], clips: dict[str, tuple[str, float]]) -> None:
    lines: list[str] = []
    tables = {corpus: {split: [] for split in SPLITS} for corpus in ("voxpopuli", "voxceleb", "hvb")}
    for u in plan:
        if u.id not in clips:
            continue
        audio, duration = clips[u.id]
        labels = u.task_labels()
        record = {
            "id": u.id, "split": u.split, "audio": audio, "duration_s": round(duration, 4),
            "voice": u.voice.to_dict(), "speaker_id": u.voice.speaker_id, "stream": u.stream,
            "task_labels": labels, "tasks": list(u.tasks),
        }  # fmt: skip
        lines.append(json.dumps(record, ensure_ascii=False))
        if u.stream == "ner":
            tables["voxpopuli"][u.split].append((
                u.id, labels["raw_text"], labels["text"], u.voice.speaker_id, u.split,
                _ner_literal(labels["raw_entities"]), _ner_literal(labels["entities"]),
            ))  # fmt: skip
        elif u.stream == "sentiment":
            tables["voxceleb"][u.split].append((
                u.id, labels["text"], u.voice.speaker_id, u.split, labels["sentiment"], 0.0, round(duration, 3),
            ))  # fmt: skip
        elif u.stream == "dialog":
            role = "agent" if _AGENT_ACTS & set(labels["dialog_acts"]) else "caller"
            end_ms = int(audio.rsplit("_", 1)[1].split(".")[0])  # the file name is {id}_0_{end_ms}.wav
            tables["hvb"][u.split].append((
                u.id, u.voice.speaker_id, labels["text"], 0, 1 if role == "agent" else 2, role, 0, end_ms,
                "", repr(labels["dialog_acts"]), u.split,
            ))  # fmt: skip
    _atomic_write_text(out / "manifest.jsonl", "".join(line + "\n" for line in lines))
    columns = {"voxpopuli": VOXPOPULI_COLUMNS, "voxceleb": VOXCELEB_COLUMNS, "hvb": HVB_COLUMNS}
    for corpus, by_split in tables.items():
        for split, rows in by_split.items():
            _atomic_write_text(out / f"slue-{corpus}" / f"slue-{corpus}_{split}.tsv", _tsv(columns[corpus], rows))


_OWN_NOTES = """
## This corpus

Synthetic speech made by spokenlm's corpus builder (`spokenlm data synth`).

- Text: the sentence sets above, **modified** (marked as the ARCTIC license asks): numbers, money,
  times and common abbreviations written out in words, typographic quotes and accents folded to
  ASCII, sentences a voice would misread (Roman numerals, symbols) left out; `normalized_text` is
  additionally lower-cased with punctuation removed. Template sentences (NER, sentiment, dialog
  acts, passages, summaries) are generated by spokenlm; person and company names come from Faker
  (MIT license).
- Voices: piper-tts with the en_US-joe-medium voice (rhasspy/piper-voices; the voice's model card
  lists its training data, NabuCasa voice-datasets, as CC0), and espeak-ng (GPL-3.0-or-later; the
  license covers the program, not speech it outputs).
- Audio spoken from Tatoeba sentences, and the Spanish translations, remain under
  **CC BY 2.0 FR**: attribution to Tatoeba (tatoeba.org) and manythings.org/anki must accompany
  any copy of this corpus or of audio made from it.
"""


def write_license_notes(out: Path, data_dir: Path | None, streams: set[str]) -> None:
    """LICENSE-NOTES.md for the corpus: the shared notes' sections for the text sources used, then
    how this corpus modified them and which voices spoke them."""
    used_files = {TEXT_FILES[s] for s in streams if s in TEXT_FILES}
    head, sections = "", []
    if used_files:
        shared = text_dir(data_dir).parent / "LICENSE-NOTES.md"
        if not shared.is_file():
            raise CorpusError(f"{shared} is missing: the corpus cannot carry its sources' attribution")
        head, *sections = shared.read_text(encoding="utf-8").split("\n## ")
    keep = [s for s in sections if any(s.startswith(f"text/{name}") for name in used_files)]
    table = [line for line in head.splitlines() if line.startswith("| text/") and any(f in line for f in used_files)]
    out_text = "\n".join([
        "# Sources, licenses and attribution of this corpus", "",
        "Copied from the shared data's LICENSE-NOTES.md (sections for the text sets this corpus uses).", "",
        "| path | what | license |", "| --- | --- | --- |", *table, "",
        *("## " + s.rstrip() + "\n" for s in keep), _OWN_NOTES,
    ])  # fmt: skip
    _atomic_write_text(out / "LICENSE-NOTES.md", out_text)


def _check_folder(out: Path, config: SynthConfig) -> None:
    path = out / "synth_config.json"
    mine = _jsonable(config.fingerprint())
    if path.is_file():
        theirs = json.loads(path.read_text(encoding="utf-8")).get("fingerprint", {})
        if theirs != mine:
            differ = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            raise CorpusError(
                f"{out} holds a corpus built with different settings ({', '.join(differ)}); its clips "
                "would not match this plan. Use another --out folder, or the same settings to resume."
            )
    _atomic_write_text(path, json.dumps({"fingerprint": mine, "hours": config.hours, "limit": config.limit,
                                         "mix": [list(m) for m in config.mix]}, indent=2) + "\n")  # fmt: skip


def _jsonable(value):
    return json.loads(json.dumps(value, default=str))


# --- the job -------------------------------------------------------------------------------------


def build_corpus(config: SynthConfig, out_dir: str | os.PathLike) -> CorpusStats:
    """Plan, speak (skipping clips already on disk), and write the corpus; returns its statistics."""
    t0 = time.perf_counter()
    config.validate()
    out = Path(out_dir)
    plan = plan_corpus(config)
    out.mkdir(parents=True, exist_ok=True)
    _check_folder(out, config)
    write_license_notes(out, config.data_dir, {u.stream for u in plan})

    clips: dict[str, tuple[str, float]] = {}  # id -> (audio path relative to out, duration_s)
    todo = []
    for u in plan:
        found = _existing_clip(out, u.audio)
        if found is not None:
            clips[u.id] = found
        else:
            todo.append((u.id, u.raw_text, u.voice, str(out / u.audio)))
    reused = len(clips)
    failed: list[str] = []
    spoken_s = 0.0

    bar = None
    if config.progress:
        from tqdm import tqdm

        bar = tqdm(total=len(plan), initial=reused, unit="utt", desc="synth", dynamic_ncols=True)
    try:
        for uid, path, duration, error in _run_jobs(todo, config):
            if error is None:
                clips[uid] = (Path(path).relative_to(out).as_posix(), duration)
                spoken_s += duration
            else:
                failed.append(f"{uid}: {error}")
            if bar is not None:
                bar.update(1)
                bar.set_postfix(audio_h=f"{spoken_s / 3600:.2f}", failed=len(failed), refresh=False)
    finally:
        if bar is not None:
            bar.close()

    _write_outputs(out, plan, clips)
    durations = {uid: d for uid, (_, d) in clips.items()}
    stats = _stats(plan, durations, len(todo) - len(failed), reused, failed, spoken_s, time.perf_counter() - t0)
    _atomic_write_text(out / "stats.json", json.dumps(stats.to_dict(), indent=2) + "\n")
    return stats


def _run_jobs(todo: list, config: SynthConfig):
    if not todo:
        return
    if config.workers == 1:
        _init_worker(config.voices)
        for job in todo:
            yield _speak_one(job)
        return
    import multiprocessing

    # spawn: a forked torch/onnxruntime parent is not safe to continue in a child.
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(config.workers, initializer=_init_worker, initargs=(config.voices,)) as pool:
        yield from pool.imap_unordered(_speak_one, todo, chunksize=1)


# --- CLI -----------------------------------------------------------------------------------------


def _parse_mix(text: str) -> tuple[tuple[str, float], ...]:
    pairs = []
    for item in text.split(","):
        name, sep, share = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"expected stream=share, got {item!r}")
        try:
            pairs.append((name.strip(), float(share)))
        except ValueError:
            raise argparse.ArgumentTypeError(f"share of {name!r} is not a number: {share!r}") from None
    return tuple(pairs)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="spokenlm data synth",
        description="Build the synthetic multitask speech corpus (SLUE TSVs + manifest.jsonl).",
    )
    p.add_argument("--out", required=True, type=Path, help="output folder (a rerun resumes it)")
    p.add_argument("--hours", type=float, default=20.0, help="estimated hours of audio to plan (default 20)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                   help="synthesis processes (default: min(2, cores))")  # fmt: skip
    p.add_argument("--limit", type=int, default=None, help="only the first N planned utterances")
    p.add_argument("--data-dir", type=Path, default=None, help="shared data folder (default <repo>/../shared/data)")
    p.add_argument("--engines", default="piper,espeak", help="comma-separated: piper, espeak")
    p.add_argument("--piper-fraction", type=float, default=0.5, help="share spoken by piper (default 0.5)")
    p.add_argument("--espeak-voices", default=None,
                   help="comma-separated espeak-ng voices to draw from, e.g. en-us+m1,en-gb-scotland+f2 "
                        f"(default: the {len(VoiceConfig().espeak_voices)} of VoiceConfig; never the held-out "
                        f"{VoiceConfig().heldout_espeak_voice})")  # fmt: skip
    p.add_argument("--mix", type=_parse_mix, default=None,
                   help="stream shares, e.g. ljspeech=0.2,tatoeba=0.3,ner=0.3,sentiment=0.2 "
                        f"(streams: {', '.join(STREAMS)})")  # fmt: skip
    p.add_argument("--dev-fraction", type=float, default=0.05)
    p.add_argument("--test-fraction", type=float, default=0.05)
    p.add_argument("--no-augment", action="store_true", help="no speed/pitch/noise/reverb augmentation")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--dry-run", action="store_true", help="plan only: print the planned counts and hours")
    return p


def synth_main(argv: list[str] | None = None) -> int:
    """`spokenlm data synth`: 0 on success, 1 if more than 0.5% of the utterances failed, 2 on a usage error."""
    args = build_parser().parse_args(argv)
    voices = replace(
        VoiceConfig(), engines=tuple(e.strip() for e in args.engines.split(",") if e.strip()),
        piper_fraction=args.piper_fraction, augment=not args.no_augment,
    )  # fmt: skip
    if args.espeak_voices is not None:
        voices = replace(voices, espeak_voices=tuple(v.strip() for v in args.espeak_voices.split(",") if v.strip()))
        unknown = [v for v in voices.espeak_voices if not espeak_voice_exists(v)]
        if unknown:
            print(f"spokenlm data synth: error: espeak-ng does not know voice(s) {', '.join(unknown)}", file=sys.stderr)
            return 2
    config = SynthConfig(
        seed=args.seed, hours=args.hours, limit=args.limit, mix=args.mix or DEFAULT_MIX,
        dev_fraction=args.dev_fraction, test_fraction=args.test_fraction, voices=voices,
        data_dir=args.data_dir, workers=args.workers, progress=not args.no_progress,
    )  # fmt: skip
    try:
        if args.dry_run:
            plan = plan_corpus(config)
            est = Counter()
            for u in plan:
                est[(u.stream, u.split)] += _estimate_s(u.raw_text) / 3600
            print(f"{len(plan)} utterances, ~{sum(est.values()):.2f} h estimated")
            for (stream, split), h in sorted(est.items()):
                print(f"  {stream:<10} {split:<10} {h:7.3f} h")
            return 0
        stats = build_corpus(config, args.out)
    except (ValueError, RuntimeError, OSError) as error:
        print(f"spokenlm data synth: error: {error}", file=sys.stderr)
        return 2
    print(stats)
    if stats.failed:
        print(f"{len(stats.failed)} utterance(s) failed, first: {stats.failed[0]}", file=sys.stderr)
    return 1 if len(stats.failed) > 0.005 * max(len(stats.failed) + stats.utterances, 1) else 0


__all__ = [
    "CorpusError", "CorpusStats", "SynthConfig", "Utterance", "build_corpus", "build_parser", "default",
    "plan_corpus", "split_of", "synth_main", "tiny",
]  # fmt: skip
