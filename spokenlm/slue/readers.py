"""SLUE readers: the official SLUE and SLUE Phase-2 downloads, read into typed records.

SLUE (Shon et al., 2022, §3) and SLUE Phase-2 (Shon et al., 2023, §3) publish one TSV per split plus
audio files. Each reader takes the directory the downloads were unpacked into (the one *holding*
``slue-voxpopuli/``, or that corpus directory itself) and a split — ``fine-tune``, ``dev`` (the
default: the labelled evaluation split) or ``test`` — and returns a ``SlueSplit``: the records, the
audio files that are missing (listed, never fatal, so a batch job can run the rest and report
them), and the labelled rows slue-toolkit itself leaves out of evaluation.

Layouts (confirmed against slue-toolkit's ``prepare_*.py`` and ESPnet's SLUE recipes unless noted):

  slue-voxpopuli/slue-voxpopuli_{split}.tsv        id raw_text normalized_text speaker_id split
                                                   raw_ner normalized_ner
  slue-voxpopuli/{split}/{id}.ogg                  NER: Python-literal [[TAG, start, length], ...]
                                                   over the matching text, or None
  slue-voxceleb/slue-voxceleb_{split}.tsv          id normalized_text speaker_id split sentiment
                                                   start_second end_second
  slue-voxceleb/{split}_raw/{id}.flac              the clip is [start_second, end_second] of it
  slue-hvb/slue-hvb_{split}.tsv                    issue_id speaker_id text utt_index channel role
                                                   start_ms duration_ms intent dialog_acts (split)
  slue-hvb/{split}/{issue_id}_{start_ms}_{start_ms+duration_ms}.wav
  slue-sqa5/slue-sqa5_{split}.tsv                  question_id ... normalized_question_text
                                                   question_speaker_id document_id ...
                                                   normalized_document_text ... answer_spans
  slue-sqa5/{split}/question/{question_id}.wav, {split}/document/{document_id}.wav,
  slue-sqa5/{split}/word2time/{document_id}.txt
  slue-ted_{s}/slue-ted_{s}.tsv, slue-ted_{s}/{s}/{id}.flac   id transcript speaker split title
                                                   abstract; {s} is "train" or "fine-tune" for the
                                                   fine-tune split (the ESPnet recipe renames it)
  NEL: see ``read_nel``; its download layout could not be confirmed.

A blind test split (``*_test_blind.tsv``, or a test TSV without the label columns) is read with its
labels set to None. TSVs are read with pandas (``keep_default_na=False``, every cell a string) and
label literals with ``ast.literal_eval`` — never ``eval``.

This module does not decode audio (see ``load_clip``) and computes no metrics (see metrics.py).
"""

from __future__ import annotations

import ast
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Generic, Iterator, Sequence, TypeVar

from spokenlm.corpora import AudioRef, load_ref
from spokenlm.tasks import DIALOG_ACTS, NER_TAGS, SENTIMENTS

if TYPE_CHECKING:
    from torch import Tensor

SPLITS: tuple[str, ...] = ("fine-tune", "dev", "test")
DEFAULT_SPLIT = "dev"  # the labelled evaluation split; test labels are blind


class SlueDataError(ValueError):
    """SLUE data that cannot be read: wrong directory, missing columns, malformed labels."""


# --- records ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NerSpan:
    """One SLUE-VoxPopuli entity label: ``text[start_char:start_char + length]`` is the phrase."""

    tag: str  # one of NER_TAGS (raw OntoNotes tag; metrics.py maps it to the combined set)
    start_char: int
    length: int

    def phrase(self, text: str) -> str:
        return text[self.start_char : self.start_char + self.length]


@dataclass(frozen=True)
class VoxPopuliRecord:
    id: str
    audio_path: Path
    split: str
    speaker_id: str | None
    raw_text: str | None  # None on the blind test split
    normalized_text: str | None  # the ASR reference
    raw_ner: tuple[NerSpan, ...] | None  # () where the TSV says None (no entity); None when blind
    normalized_ner: tuple[NerSpan, ...] | None  # offsets into normalized_text: the NER reference
    audio: AudioRef | None = None  # set by spokenlm.slue.sources: where the audio really is (a cut, a table row)

    def entities(self) -> list[tuple[str, str]] | None:
        """The NER reference as (tag, phrase) pairs over the normalized text; None when blind."""
        if self.normalized_ner is None or self.normalized_text is None:
            return None
        return [(span.tag, span.phrase(self.normalized_text)) for span in self.normalized_ner]


@dataclass(frozen=True)
class VoxCelebRecord:
    id: str
    audio_path: Path  # the whole {split}_raw recording; the utterance is [start_s, end_s] of it
    split: str
    start_s: float | None  # None when the TSV gives no cut: use the whole file
    end_s: float | None
    speaker_id: str | None
    normalized_text: str | None  # None when blind
    sentiment: str | None  # one of SENTIMENTS; None when blind
    audio: AudioRef | None = None  # set by spokenlm.slue.sources: where the audio really is (a cut, a table row)


@dataclass(frozen=True)
class HvbRecord:
    id: str  # "{issue_id}_{start_ms}_{end_ms}", the audio file's stem as slue-toolkit names it
    audio_path: Path
    split: str
    issue_id: str
    start_ms: int
    duration_ms: int
    speaker_id: str | None
    utt_index: str | None
    channel: str | None
    role: str | None  # "caller" or "agent"
    intent: str | None
    text: str | None  # None when blind
    dialog_acts: tuple[str, ...] | None  # multi-label subset of DIALOG_ACTS; None when blind


@dataclass(frozen=True)
class TedRecord:
    id: str
    audio_path: Path
    split: str
    speaker: str | None
    transcript: str | None
    title: str | None  # the summary target is title + abstract (ESPnet joins them with [SEP])
    abstract: str | None  # None when blind


@dataclass(frozen=True)
class AnswerSpan:
    """Where an answer is spoken in the SQA-5 document audio."""

    answer: str
    start_s: float
    end_s: float


@dataclass(frozen=True)
class Sqa5Record:
    id: str  # the question id
    question_audio_path: Path
    document_audio_path: Path
    word2time_path: Path  # word alignment of the document; see read_word2time
    split: str
    document_id: str
    question_speaker_id: str | None
    document_speaker_id: str | None
    question_text: str | None  # normalized_question_text
    document_text: str | None  # normalized_document_text
    answer_spans: tuple[AnswerSpan, ...] | None  # every place the answer is spoken; None when blind


@dataclass(frozen=True)
class WordTiming:
    word: str  # "" for silence
    start_s: float
    end_s: float
    in_entity: bool = False  # inside a named-entity phrase ("#"-tagged in slue-toolkit's files)


@dataclass(frozen=True)
class EntityTiming:
    phrase: str
    start_s: float
    end_s: float
    label: str = ""


@dataclass(frozen=True)
class NelRecord:
    id: str
    audio_path: Path  # the SLUE-VoxPopuli recording of the same id
    split: str
    words: tuple[WordTiming, ...]  # forced alignment of the whole utterance, silences included
    entities: tuple[EntityTiming, ...] | None  # None when blind


@dataclass(frozen=True)
class MissingAudio:
    id: str
    path: Path


R = TypeVar("R")


@dataclass(frozen=True)
class SlueSplit(Generic[R]):
    """One split of one SLUE corpus as read from disk."""

    corpus: str  # "slue-voxpopuli", ...
    split: str  # one of SPLITS
    source: Path  # the TSV (or label file) the records came from
    records: tuple[R, ...]
    blind: bool  # True when the split carries no labels (records' label fields are None)
    missing_audio: tuple[MissingAudio, ...] = ()  # listed, not fatal: the job runs the rest
    skipped: tuple[str, ...] = ()  # "id: why" for labelled rows slue-toolkit leaves out

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[R]:
        return iter(self.records)

    def records_with_audio(self) -> tuple[R, ...]:
        missing = {m.id for m in self.missing_audio}
        return tuple(r for r in self.records if r.id not in missing)  # type: ignore[attr-defined]

    def check_audio(self) -> None:
        """Raise SlueDataError naming the missing audio files, if any (for callers that need all)."""
        if self.missing_audio:
            shown = ", ".join(f"'{m.path}'" for m in self.missing_audio[:5])
            more = f" and {len(self.missing_audio) - 5} more" if len(self.missing_audio) > 5 else ""
            raise SlueDataError(
                f"{len(self.missing_audio)} of {len(self.records)} audio files of {self.corpus} "
                f"{self.split} are missing: {shown}{more}"
            )


# --- shared plumbing ----------------------------------------------------------------------------


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise SlueDataError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    return split


def _corpus_dir(root: Path, corpus: str) -> Path:
    """``root/corpus`` when it exists, else ``root`` itself when it is the corpus directory."""
    root = Path(root)
    if not root.exists():
        raise SlueDataError(f"SLUE data directory '{root}' does not exist")
    if not root.is_dir():
        raise SlueDataError(f"SLUE data directory '{root}' is a file, not a directory")
    inner = root / corpus
    return inner if inner.is_dir() else root


def _find_tsv(root: Path, corpus: str, split: str) -> tuple[Path, bool]:
    """The split's TSV and whether it is the blind one (``*_test_blind.tsv``)."""
    base = _corpus_dir(root, corpus)
    names = [(f"{corpus}_{split}.tsv", False)] + [(f"{corpus}_test_blind.tsv", True)] * (split == "test")
    for name, blind in names:
        if (base / name).is_file():
            return base / name, blind
    expected = " or ".join(f"'{root / corpus / n}'" for n, _ in names)
    raise SlueDataError(
        f"no {corpus} {split} split under '{root}': expected {expected} (or the same file directly "
        f"in '{root}'); point the data directory at where the {corpus} download was unpacked"
    )


def _read_table(path: Path, *, sep: str = "\t") -> tuple[list[str], list[dict[str, str]]]:
    """Column names and rows (dicts of strings) of a TSV/CSV."""
    import csv

    import pandas as pd  # heavy; only readers need it

    def parse(quoting: int):
        return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, quoting=quoting)

    # Files written by pandas quote cells holding quotes, and slue-toolkit reads them that way. A
    # parse error, or a cell that swallowed a tab or newline, means the file was written unquoted
    # and a text began with '"' (ESPnet's SQA-5 recipe patches this by hand): read it again
    # taking quotes literally.
    errors = (pd.errors.ParserError, UnicodeDecodeError, ValueError)
    try:
        df = parse(csv.QUOTE_MINIMAL)
        suspicious = any(df[c].str.contains(r"[\t\n]", regex=True).any() for c in df.columns)
    except errors:
        suspicious = True
    if suspicious:
        try:
            df = parse(csv.QUOTE_NONE)
        except errors as e:
            raise SlueDataError(f"could not parse '{path}': {e}") from e
    return [str(c) for c in df.columns], df.to_dict("records")


def _require(path: Path, columns: Sequence[str], required: Sequence[str]) -> None:
    missing = [c for c in required if c not in columns]
    if missing:
        raise SlueDataError(
            f"'{path}' is missing columns: {', '.join(missing)} (it has: {', '.join(columns)})"
        )


def _open_split(
    root: Path, corpus: str, split: str, *, required: Sequence[str], labels: Sequence[str]
) -> tuple[Path, list[dict[str, str]], bool]:
    """The split's TSV, its rows, and whether it is labelled.

    fine-tune and dev must carry every label column. A test TSV is labelled only when it is not
    ``*_test_blind.tsv`` and has all of them; otherwise its label fields are read as None (blind
    releases keep some columns, e.g. VoxPopuli's text, and drop others).
    """
    path, blind_name = _find_tsv(root, corpus, split)
    columns, rows = _read_table(path)
    labelled = split != "test" or (not blind_name and all(c in columns for c in labels))
    _require(path, columns, tuple(required) + (tuple(labels) if labelled else ()))
    return path, rows, labelled


def _opt(row: dict[str, str], column: str) -> str | None:
    return row.get(column)


def _float(value: str, *, path: Path, line: int, column: str) -> float:
    try:
        out = float(value)
    except ValueError:
        raise SlueDataError(f"'{path}' line {line}: {column} {value!r} is not a number") from None
    if not math.isfinite(out):
        raise SlueDataError(f"'{path}' line {line}: {column} {value!r} is not a finite number")
    return out


def _int(value: str, *, path: Path, line: int, column: str) -> int:
    out = _float(value, path=path, line=line, column=column)
    if out != int(out):
        raise SlueDataError(f"'{path}' line {line}: {column} {value!r} is not a whole number")
    return int(out)


def _literal(value: str, *, path: Path, line: int, column: str) -> object:
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        raise SlueDataError(f"'{path}' line {line}: {column} {value!r} is not a Python literal") from None


def _split(
    corpus: str,
    split: str,
    source: Path,
    records: list,
    labelled: bool = True,
    *,
    blind: bool | None = None,
    audio: Callable[[object], Sequence[Path]] = lambda r: (r.audio_path,),  # type: ignore[attr-defined]
    skipped: Sequence[str] = (),
) -> SlueSplit:
    """The SlueSplit every reader returns; `audio` names each record's files, checked for existence."""
    return SlueSplit(
        corpus=corpus,
        split=split,
        source=source,
        records=tuple(records),
        blind=not labelled if blind is None else blind,
        missing_audio=_missing_audio(records, audio),
        skipped=tuple(skipped),
    )


def _missing_audio(records: Sequence[object], paths: Callable[[object], Sequence[Path]]) -> tuple[MissingAudio, ...]:
    seen: dict[Path, bool] = {}  # SQA-5 documents are shared by many questions: stat each once
    out = []
    for record in records:
        for path in paths(record):
            if path not in seen:
                seen[path] = path.is_file()
            if not seen[path]:
                out.append(MissingAudio(id=record.id, path=path))  # type: ignore[attr-defined]
    return tuple(out)


# line numbers in messages count the header as line 1, so data row i is line i + 2
def _line(i: int) -> int:
    return i + 2


# --- SLUE-VoxPopuli: ASR, NER -------------------------------------------------------------------

VOXPOPULI_LABELS = ("raw_text", "normalized_text", "raw_ner", "normalized_ner")


def read_voxpopuli(root: str | Path, split: str = DEFAULT_SPLIT) -> SlueSplit[VoxPopuliRecord]:
    """SLUE-VoxPopuli (ASR, NER): ``slue-voxpopuli_{split}.tsv`` and ``{split}/{id}.ogg``."""
    split = check_split(split)
    path, rows, labelled = _open_split(Path(root), "slue-voxpopuli", split, required=("id",), labels=VOXPOPULI_LABELS)
    audio_dir = path.parent / split
    records = []
    for i, row in enumerate(rows):
        raw_text = _opt(row, "raw_text")
        text = _opt(row, "normalized_text")
        raw_ner = norm_ner = None
        if labelled:
            # raw_ner is carried along but scored by nobody, so only its syntax is checked
            raw_ner = _ner_spans(row["raw_ner"], None, path=path, line=_line(i), column="raw_ner")
            norm_ner = _ner_spans(row["normalized_ner"], text or "", path=path, line=_line(i), column="normalized_ner")
        records.append(
            VoxPopuliRecord(
                id=row["id"],
                audio_path=audio_dir / f"{row['id']}.ogg",
                split=split,
                speaker_id=_opt(row, "speaker_id"),
                raw_text=raw_text if labelled else None,
                normalized_text=text if labelled else None,
                raw_ner=raw_ner,
                normalized_ner=norm_ner,
            )
        )
    return _split("slue-voxpopuli", split, path, records, labelled)


def _ner_spans(value: str, text: str | None, *, path: Path, line: int, column: str) -> tuple[NerSpan, ...]:
    """Parse ``[[TAG, start, length], ...]`` / ``None`` / empty into spans (inside ``text`` if given)."""
    if value.strip() in ("", "None", "[]"):
        return ()
    parsed = _literal(value, path=path, line=line, column=column)
    if not isinstance(parsed, (list, tuple)):
        raise SlueDataError(f"'{path}' line {line}: {column} must be a list of [TAG, start, length], got {value!r}")
    spans = []
    for item in parsed:
        ok = (
            isinstance(item, (list, tuple))
            and len(item) == 3
            and isinstance(item[0], str)
            and all(isinstance(x, int) and not isinstance(x, bool) for x in item[1:])
        )
        if not ok:
            raise SlueDataError(f"'{path}' line {line}: {column} item {item!r} is not [TAG, start, length]")
        tag, start, length = item
        if tag not in NER_TAGS:
            raise SlueDataError(f"'{path}' line {line}: {column} has unknown entity tag {tag!r}")
        if start < 0 or length <= 0 or (text is not None and start + length > len(text)):
            raise SlueDataError(
                f"'{path}' line {line}: {column} span [{tag!r}, {start}, {length}] lies outside "
                f"the {len(text or '')}-character text"
            )
        spans.append(NerSpan(tag=tag, start_char=start, length=length))
    return tuple(spans)


# --- SLUE-VoxCeleb: ASR, sentiment --------------------------------------------------------------

VOXCELEB_LABELS = ("normalized_text", "sentiment")


def read_voxceleb(root: str | Path, split: str = DEFAULT_SPLIT) -> SlueSplit[VoxCelebRecord]:
    """SLUE-VoxCeleb (ASR, sentiment): ``slue-voxceleb_{split}.tsv`` and ``{split}_raw/{id}.flac``.

    Each utterance is ``[start_second, end_second]`` of its raw recording (see ``load_clip``).
    Labelled rows whose sentiment is not Negative/Neutral/Positive (the release has a few
    "<mixed>"/"Disagreement" rows) are left out, as slue-toolkit's ``prepare_voxceleb`` does; their
    ids are listed in ``skipped``.
    """
    split = check_split(split)
    cut_columns = ("start_second", "end_second") if split != "test" else ()  # blind test may lack them
    path, rows, labelled = _open_split(
        Path(root), "slue-voxceleb", split, required=("id",) + cut_columns, labels=VOXCELEB_LABELS
    )
    audio_dir = path.parent / f"{split}_raw"
    records, skipped = [], []
    for i, row in enumerate(rows):
        sentiment = row["sentiment"] if labelled else None
        if labelled and sentiment not in SENTIMENTS:
            skipped.append(f"{row['id']}: sentiment {sentiment!r} is not one of {', '.join(SENTIMENTS)}")
            continue
        start = end = None
        if row.get("start_second", "") != "" or row.get("end_second", "") != "":
            start = _float(row.get("start_second", ""), path=path, line=_line(i), column="start_second")
            end = _float(row.get("end_second", ""), path=path, line=_line(i), column="end_second")
            if not 0 <= start < end:
                raise SlueDataError(
                    f"'{path}' line {_line(i)}: cut [{start}, {end}] s is empty or negative"
                )
        records.append(
            VoxCelebRecord(
                id=row["id"],
                audio_path=audio_dir / f"{row['id']}.flac",
                split=split,
                start_s=start,
                end_s=end,
                speaker_id=_opt(row, "speaker_id"),
                normalized_text=row["normalized_text"] if labelled else None,
                sentiment=sentiment,
            )
        )
    return _split("slue-voxceleb", split, path, records, labelled, skipped=skipped)


# --- SLUE-HVB: dialog acts ----------------------------------------------------------------------

HVB_LABELS = ("text", "dialog_acts")


def read_hvb(root: str | Path, split: str = DEFAULT_SPLIT) -> SlueSplit[HvbRecord]:
    """SLUE-HVB dialog acts (multi-label): ``slue-hvb_{split}.tsv`` and
    ``{split}/{issue_id}_{start_ms}_{start_ms + duration_ms}.wav``.

    Layout from slue-toolkit ``prepare_hvb.py``, ESPnet ``slue-hvb`` and the HF slue-phase-2 loader
    (which build the wav name the same way); ``dialog_acts`` is a Python-literal list of acts.
    """
    split = check_split(split)
    path, rows, labelled = _open_split(
        Path(root), "slue-hvb", split, required=("issue_id", "start_ms", "duration_ms"), labels=HVB_LABELS
    )
    audio_dir = path.parent / split
    records = []
    for i, row in enumerate(rows):
        start = _int(row["start_ms"], path=path, line=_line(i), column="start_ms")
        duration = _int(row["duration_ms"], path=path, line=_line(i), column="duration_ms")
        stem = f"{row['issue_id']}_{start}_{start + duration}"
        acts = None
        if labelled:
            acts = _dialog_acts(row["dialog_acts"], path=path, line=_line(i))
        records.append(
            HvbRecord(
                id=stem,
                audio_path=audio_dir / f"{stem}.wav",
                split=split,
                issue_id=row["issue_id"],
                start_ms=start,
                duration_ms=duration,
                speaker_id=_opt(row, "speaker_id"),
                utt_index=_opt(row, "utt_index"),
                channel=_opt(row, "channel"),
                role=_opt(row, "role"),
                intent=_opt(row, "intent"),
                text=row["text"] if labelled else None,
                dialog_acts=acts,
            )
        )
    return _split("slue-hvb", split, path, records, labelled)


def _dialog_acts(value: str, *, path: Path, line: int) -> tuple[str, ...]:
    parsed = _literal(value, path=path, line=line, column="dialog_acts") if value.strip() else []
    if not isinstance(parsed, (list, tuple)) or not all(isinstance(a, str) for a in parsed):
        raise SlueDataError(f"'{path}' line {line}: dialog_acts must be a list of act names, got {value!r}")
    unknown = sorted(set(parsed) - set(DIALOG_ACTS))
    if unknown:
        raise SlueDataError(f"'{path}' line {line}: unknown dialog acts {', '.join(map(repr, unknown))}")
    return tuple(a for a in DIALOG_ACTS if a in parsed)  # DIALOG_ACTS order, no duplicates


# --- SLUE-TED: summarization --------------------------------------------------------------------

TED_LABELS = ("title", "abstract")  # the summary target; the blind test has neither
# How each split is spelled in directory and file names: the HF fine-tune zip says "train" (ESPnet
# renames it "fine-tune"), the blind test zip "test_blind"; audio sits in {split}/ beside the TSV.
_TED_NAMES = {"fine-tune": ("fine-tune", "train"), "dev": ("dev",), "test": ("test", "test_blind")}
_TED_AUDIO = {"fine-tune": ("fine-tune", "train"), "dev": ("dev",), "test": ("test",)}


def read_ted(root: str | Path, split: str = DEFAULT_SPLIT) -> SlueSplit[TedRecord]:
    """SLUE-TED summarization: ``slue-ted_{s}/slue-ted_{s}.tsv`` and ``slue-ted_{s}/{s}/{id}.flac``.

    Columns ``id transcript speaker split title abstract`` (ESPnet ``slue-ted`` recipes). The
    directory names are only partly confirmed: the HF zips unpack to ``slue-ted_train``/``slue-ted``,
    ``slue-ted_dev`` and ``slue-ted_test_blind`` and the ESPnet recipes rename them variously, so
    every spelling in ``_TED_NAMES`` is tried, and a flat ``slue-ted/`` directory too.
    """
    split = check_split(split)
    root = Path(root)
    _corpus_dir(root, "slue-ted")  # existence checks
    names = _TED_NAMES[split]
    dirs = [root / f"slue-ted_{n}" for n in names + ("test",) * (split == "test")] + [root / "slue-ted", root]
    candidates = [d / f"slue-ted_{n}.tsv" for d in dict.fromkeys(dirs) for n in names]
    path = next((c for c in candidates if c.is_file()), None)
    if path is None:
        raise SlueDataError(
            f"no slue-ted {split} split under '{root}': expected '{candidates[0]}' "
            f"(also tried {len(candidates) - 1} other spellings, e.g. '{candidates[-2]}')"
        )
    columns, rows = _read_table(path)
    labelled = split != "test" or (not path.name.endswith("_blind.tsv") and all(c in columns for c in TED_LABELS))
    _require(path, columns, ("id",) + (TED_LABELS if labelled else ()))
    audio_dirs = [path.parent / n for n in _TED_AUDIO[split]]
    audio_dir = next((d for d in audio_dirs if d.is_dir()), audio_dirs[0])
    records = [
        TedRecord(
            id=row["id"],
            audio_path=audio_dir / f"{row['id']}.flac",
            split=split,
            speaker=_opt(row, "speaker"),
            transcript=_opt(row, "transcript"),
            title=row["title"] if labelled else None,
            abstract=row["abstract"] if labelled else None,
        )
        for row in rows
    ]
    return _split("slue-ted", split, path, records, labelled)


# --- SLUE-SQA-5: spoken question answering ------------------------------------------------------

SQA5_LABELS = ("answer_spans",)


def read_sqa5(root: str | Path, split: str = DEFAULT_SPLIT) -> SlueSplit[Sqa5Record]:
    """SLUE-SQA-5: ``slue-sqa5_{split}.tsv`` with ``{split}/question/{question_id}.wav``,
    ``{split}/document/{document_id}.wav`` and ``{split}/word2time/{document_id}.txt``.

    Column names follow the HF slue-phase-2 features (question_id, normalized_question_text,
    question_speaker_id, document_id, normalized_document_text, document_speaker_id,
    answer_spans); ESPnet's recipe reads the same TSV by position (0, 2, 3, 4, 6, 9), which agrees.
    ``answer_spans`` is a Python-literal list of ``[answer, start_second, end_second]`` over the
    document audio.
    """
    split = check_split(split)
    path, rows, labelled = _open_split(
        Path(root), "slue-sqa5", split, required=("question_id", "document_id"), labels=SQA5_LABELS
    )
    base = path.parent / split
    records = []
    for i, row in enumerate(rows):
        spans = _answer_spans(row["answer_spans"], path=path, line=_line(i)) if labelled else None
        records.append(
            Sqa5Record(
                id=row["question_id"],
                question_audio_path=base / "question" / f"{row['question_id']}.wav",
                document_audio_path=base / "document" / f"{row['document_id']}.wav",
                word2time_path=base / "word2time" / f"{row['document_id']}.txt",
                split=split,
                document_id=row["document_id"],
                question_speaker_id=_opt(row, "question_speaker_id"),
                document_speaker_id=_opt(row, "document_speaker_id"),
                question_text=_opt(row, "normalized_question_text"),
                document_text=_opt(row, "normalized_document_text"),
                answer_spans=spans,
            )
        )
    return _split(
        "slue-sqa5", split, path, records, labelled, audio=lambda r: (r.question_audio_path, r.document_audio_path)
    )


def _answer_spans(value: str, *, path: Path, line: int) -> tuple[AnswerSpan, ...]:
    parsed = _literal(value, path=path, line=line, column="answer_spans")
    if isinstance(parsed, tuple) and len(parsed) == 3 and isinstance(parsed[0], str):
        parsed = [parsed]  # a single span written without the outer list
    if not isinstance(parsed, (list, tuple)):
        raise SlueDataError(f"'{path}' line {line}: answer_spans must be a list of [answer, start, end]")
    spans = []
    for item in parsed:
        ok = (
            isinstance(item, (list, tuple))
            and len(item) == 3
            and isinstance(item[0], str)
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in item[1:])
        )
        if not ok or not 0 <= item[1] <= item[2]:
            raise SlueDataError(f"'{path}' line {line}: answer span {item!r} is not [answer, start, end]")
        spans.append(AnswerSpan(answer=item[0], start_s=float(item[1]), end_s=float(item[2])))
    return tuple(spans)


def read_word2time(path: str | Path) -> tuple[WordTiming, ...]:
    """An SQA-5 ``word2time/{document_id}.txt``: tab-separated lines whose fields 1-3 are word,
    start and end seconds (ESPnet's reading); lines with fewer fields (blank or sentence breaks)
    are skipped."""
    path = Path(path)
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        fields = line.rstrip("\r\n").split("\t")
        if len(fields) < 4:
            continue
        start = _float(fields[2], path=path, line=n, column="start")
        end = _float(fields[3], path=path, line=n, column="end")
        out.append(WordTiming(word=fields[1], start_s=start, end_s=end))
    return tuple(out)


# --- VoxPopuli NEL: named entity localization ---------------------------------------------------

NEL_DIRS = ("slue-voxpopuli/nel", "slue-vp_nel", "nel")
_NEL_PREFIXES = {"dev": ("dev", "validation", "devel"), "test": ("test",)}


def read_nel(root: str | Path, split: str = DEFAULT_SPLIT) -> SlueSplit[NelRecord]:
    """SLUE-VoxPopuli named entity localization (dev and test only).

    The layout of the official ``slue-vp_nel_blind.zip`` could not be confirmed, so this reads the
    files slue-toolkit's ``prepare_voxpopuli_nel.py`` writes from it (and ``eval_nel.py`` reads),
    in ``slue-voxpopuli/nel/`` (or ``slue-vp_nel/``, ``nel/``) under ``root``:

      {prefix}_tagged_word_alignments.json  {id: [[word, start, end], ...]}; "" is silence and a
                                            leading "#" marks words of an entity phrase
      {prefix}_entity_alignments.csv        id,entity_phrase,start,end,entity_label (absent: blind)

    with prefix ``dev`` (or ``validation``/``devel``) or ``test``; audio is the SLUE-VoxPopuli
    recording ``slue-voxpopuli/{split}/{id}.ogg``.
    """
    split = check_split(split)
    if split not in _NEL_PREFIXES:
        raise SlueDataError(f"VoxPopuli NEL has no {split} split; expected one of {', '.join(_NEL_PREFIXES)}")
    root = Path(root)
    _corpus_dir(root, "slue-voxpopuli")  # existence checks
    tried = []
    found = None
    for sub in NEL_DIRS + (".",):
        for prefix in _NEL_PREFIXES[split]:
            candidate = root / sub / f"{prefix}_tagged_word_alignments.json"
            tried.append(candidate)
            if candidate.is_file():
                found = (root / sub, prefix)
                break
        if found:
            break
    if found is None:
        raise SlueDataError(
            f"no VoxPopuli NEL {split} split under '{root}': expected '{tried[0]}' "
            "(slue-toolkit prepare_voxpopuli_nel.py output; also looked in slue-vp_nel/ and nel/)"
        )
    nel_dir, prefix = found
    words_path = nel_dir / f"{prefix}_tagged_word_alignments.json"
    try:
        alignments = json.loads(words_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SlueDataError(f"could not parse '{words_path}': {e}") from e
    if not isinstance(alignments, dict):
        raise SlueDataError(f"'{words_path}' must map utterance ids to word lists")

    entities_path = nel_dir / f"{prefix}_entity_alignments.csv"
    entities: dict[str, list[EntityTiming]] | None = None
    if entities_path.is_file():
        entities = {}
        columns, rows = _read_table(entities_path, sep=",")
        _require(entities_path, columns, ("id", "entity_phrase", "start", "end"))
        for i, row in enumerate(rows):
            entities.setdefault(row["id"], []).append(
                EntityTiming(
                    phrase=row["entity_phrase"],
                    start_s=_float(row["start"], path=entities_path, line=_line(i), column="start"),
                    end_s=_float(row["end"], path=entities_path, line=_line(i), column="end"),
                    label=row.get("entity_label", ""),
                )
            )
        unknown = sorted(set(entities) - set(alignments))
        if unknown:
            raise SlueDataError(
                f"'{entities_path}' has entities for ids without word alignments: {', '.join(unknown[:5])}"
            )

    vp_dir = root / "slue-voxpopuli" if (root / "slue-voxpopuli").is_dir() else root
    audio_dir = vp_dir / split
    records = []
    for utt_id, words in alignments.items():
        records.append(
            NelRecord(
                id=utt_id,
                audio_path=audio_dir / f"{utt_id}.ogg",
                split=split,
                words=_tagged_words(words, path=words_path, utt_id=utt_id),
                entities=None if entities is None else tuple(entities.get(utt_id, ())),
            )
        )
    return _split("slue-voxpopuli-nel", split, words_path, records, blind=entities is None)


def _tagged_words(words: object, *, path: Path, utt_id: str) -> tuple[WordTiming, ...]:
    if not isinstance(words, list):
        raise SlueDataError(f"'{path}': {utt_id} must map to a list of [word, start, end]")
    out = []
    for item in words:
        ok = (
            isinstance(item, (list, tuple))
            and len(item) == 3
            and isinstance(item[0], str)
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in item[1:])
        )
        if not ok:
            raise SlueDataError(f"'{path}': {utt_id} has a word entry {item!r} that is not [word, start, end]")
        word, start, end = item
        in_entity = word.startswith("#")
        out.append(WordTiming(word=word[1:] if in_entity else word, start_s=float(start), end_s=float(end), in_entity=in_entity))
    return tuple(out)


# --- suites and audio ---------------------------------------------------------------------------

READERS: dict[str, Callable[..., SlueSplit]] = {
    "voxpopuli": read_voxpopuli,
    "voxceleb": read_voxceleb,
    "hvb": read_hvb,
    "ted": read_ted,
    "sqa5": read_sqa5,
    "nel": read_nel,
}


def read_slue(suite: str, root: str | Path, split: str = DEFAULT_SPLIT) -> SlueSplit:
    """The reader for ``spokenlm eval slue --suite``: one of READERS' keys."""
    if suite not in READERS:
        raise SlueDataError(f"unknown SLUE suite {suite!r}; expected one of {', '.join(READERS)}")
    return READERS[suite](root, split)


def audio_ref(record) -> AudioRef:
    """Where a record's audio is: its `audio` when a non-TSV source set one, else its audio file cut
    to the record's [start_s, end_s] (VoxCeleb); SQA-5 records are run on their document audio."""
    if getattr(record, "audio", None) is not None:
        return record.audio
    if isinstance(record, Sqa5Record):
        return AudioRef(path=record.document_audio_path)
    return AudioRef(path=record.audio_path, start_s=getattr(record, "start_s", None), end_s=getattr(record, "end_s", None))


def load_clip(path: str | Path, start_s: float | None = None, end_s: float | None = None) -> Tensor:
    """Mono 16 kHz float32 (S,) of ``path``, cut to [start_s, end_s] seconds when given.

    The file is decoded and resampled whole, then cut at the nearest 16 kHz samples
    (spokenlm.corpora.load_ref, which every corpus format shares; slue-toolkit cuts at the file's own
    rate first; the two agree to within one source sample). An empty cut, or one ending more than
    25 ms past the recording, is an AudioError.
    """
    return load_ref(AudioRef(path=Path(path), start_s=start_s, end_s=end_s))
