"""Corpora the way speech people hold them, read into one typed stream of utterances.

    read_corpus("hf:DIR" | "lhotse:FILE" | "kaldi:DIR" | "manifest:FILE" | PATH)  -> Corpus

Formats (a bare PATH is detected by `detect_format`):
  manifest  spokenlm's manifest.jsonl (`spokenlm data synth`; spokenlm.train.data documents it)
  hf        a Hugging Face `datasets` directory as `save_to_disk` writes it (Arrow IPC files, one
            sub-directory per split of a DatasetDict), or parquet files (one file, or a directory of
            `{split}-00000-of-0000N.parquet` shards as the hub converts them). The audio column is
            an Audio struct — encoded `bytes`, a decoded `array` + `sampling_rate`, or a `path` —
            or plain bytes; ClassLabel columns are named by the features stored with the table.
  lhotse    a Lhotse CutSet manifest (cuts.jsonl / cuts.jsonl.gz, or a directory of them named by
            split). One utterance per supervision: its audio is [cut.start + sup.start, + duration]
            of the cut's recording, its id the supervision's, its text `sup.text`; other SLUE labels
            are read from `sup.custom` (then `cut.custom`) under the SLUE column names.
  kaldi     a Kaldi / ESPnet data dir: wav.scp, text, optional segments, utt2spk, utt2dur, reco2dur,
            and `utt2{column}` files for the other SLUE labels (e.g. utt2sentiment); or a directory
            of such dirs named by split. Relative paths in wav.scp are taken from the current
            directory, as Kaldi's and ESPnet's scripts (run from the recipe root) take them.
  slue      the official SLUE TSV downloads: read by spokenlm.slue.readers, not here.

Every row becomes a `SpeechRow`: id, where its audio is (`AudioRef`: a file, a cut of one, or a row of
an Arrow/parquet table), split, and labels under the SLUE column names (`LABELS`), validated.
spokenlm.slue.sources turns rows into SLUE records for `spokenlm eval slue`; spokenlm.train.data
into training utterances. Splits are SLUE's: a container named train/validation/test (a DatasetDict
split, a parquet shard, a Kaldi dir, a cuts file) holds fine-tune/dev/test; a `split` column or
custom field wins over the name.

Bad input is named, and nothing is dropped silently. A bad row — its audio file missing, no text, a
segment that starts before 0 or ends past its recording, a label that does not parse, a piped
wav.scp command (never run) — is collected as "WHERE: why"; at the end the reader raises one
CorpusError line naming the first (and how many more), unless `skip_bad`, which leaves them out and
lists them in `Corpus.skipped` / `Corpus.missing` for the caller's report. A layout the reader
cannot place (no audio column, no wav.scp, an unreadable manifest) is always an error.

Lhotse manifests are parsed with lhotse itself (`deserialize_item`), one line at a time so an error
names its line; audio is never loaded through lhotse: spokenlm decodes every format's audio with the
same `spokenlm.audio.load_audio` and the same cut, so one utterance gives one waveform whatever
format holds it, and a `command` audio source is refused, never run. pyarrow reads Arrow and parquet
(the `datasets` package is not needed). Heavy imports happen inside the readers.
"""

from __future__ import annotations

import ast
import functools
import json
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from spokenlm.tasks import DIALOG_ACTS, NER_TAGS

if TYPE_CHECKING:
    from torch import Tensor

FORMATS = ("manifest", "slue", "hf", "lhotse", "kaldi")
# The labels a row may carry, by SLUE column name (slue-voxpopuli / slue-voxceleb / slue-hvb TSVs).
LABELS = ("normalized_text", "raw_text", "normalized_ner", "raw_ner", "sentiment", "dialog_acts", "speaker_id")
# Other spellings of those columns, in the order they are tried (the hub's SLUE uses the SLUE names).
COLUMN_ALIASES = {
    "normalized_text": ("normalized_text", "text", "transcript", "transcription", "sentence"),
    "raw_text": ("raw_text",),
    "normalized_ner": ("normalized_ner", "ner"),
    "raw_ner": ("raw_ner",),
    "sentiment": ("sentiment",),
    "dialog_acts": ("dialog_acts",),
    "speaker_id": ("speaker_id", "speaker"),
}
ID_COLUMNS = ("id", "utt_id", "utterance_id", "segment_id")
# Lhotse's default tolerance for a duration that disagrees with the audio (LHOTSE_AUDIO_DURATION_MISMATCH_TOLERANCE)
DURATION_TOLERANCE_S = 0.025
SPLIT_NAMES = {
    "train": "fine-tune", "fine-tune": "fine-tune", "fine_tune": "fine-tune", "finetune": "fine-tune",
    "dev": "dev", "devel": "dev", "valid": "dev", "validation": "dev", "val": "dev",
    "test": "test", "test_blind": "test", "eval": "test",
}  # fmt: skip


class CorpusError(ValueError):
    """A corpus that cannot be read, or a row of it that is bad: the message names which and why."""


# --- records ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AudioRef:
    """Where one utterance's audio is: a file, cut to [start_s, end_s] when given; or, with `row`
    set, the `column` cell of that row of the Arrow/parquet table at `path` (then cut likewise)."""

    path: Path
    start_s: float | None = None
    end_s: float | None = None  # None: to the end of the recording
    row: int | None = None
    column: str = "audio"

    def describe(self) -> str:
        where = str(self.path) if self.row is None else f"{self.path} row {self.row}"
        if self.start_s is None and self.end_s is None:
            return where
        return f"{where} [{self.start_s or 0.0:g}, {'end' if self.end_s is None else f'{self.end_s:g}'}] s"

    def to_dict(self) -> dict:
        """JSON-able (a Ray work item); `from_dict` reads it back."""
        return {"path": str(self.path), "start_s": self.start_s, "end_s": self.end_s, "row": self.row,
                "column": self.column}  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict) -> AudioRef:
        return cls(path=Path(d["path"]), start_s=d.get("start_s"), end_s=d.get("end_s"), row=d.get("row"),
                   column=d.get("column", "audio"))  # fmt: skip


@dataclass(frozen=True)
class SpeechRow:
    """One utterance of a corpus, whatever format held it."""

    id: str
    audio: AudioRef
    split: str | None  # fine-tune / dev / test (or the source's own name); None: the source does not say
    labels: dict = field(repr=False)  # LABELS keys present in the row; NER as ((tag, start, length), ...)
    duration_s: float | None = None  # when the source says (a segment, utt2dur, a decoded array)
    tasks: tuple[str, ...] | None = None  # spokenlm manifests only: the tasks the row is labelled for
    where: str = ""  # "'FILE' line N" / "'FILE' row N": for messages


@dataclass(frozen=True)
class MissingRow:
    id: str
    path: Path
    where: str


@dataclass(frozen=True)
class Corpus:
    """What a reader read: its good rows, and what it left out (only with skip_bad)."""

    format: str
    source: Path
    rows: tuple[SpeechRow, ...]
    columns: frozenset[str]  # LABELS the source carries at all (a missing one: unlabelled for it)
    skipped: tuple[str, ...] = ()  # "WHERE: id: why" of each bad row left out
    missing: tuple[MissingRow, ...] = ()  # rows left out because their audio file is missing

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[SpeechRow]:
        return iter(self.rows)

    def splits(self) -> list[str | None]:
        return list(dict.fromkeys(r.split for r in self.rows))


class BadRows:
    """Collects bad rows while a reader runs; `finish` raises the first (or keeps them, skip_bad)."""

    def __init__(self, source: Path, *, skip_bad: bool) -> None:
        self.source, self.skip_bad = source, skip_bad
        self.skipped: list[str] = []
        self.missing: list[MissingRow] = []

    def add(self, where: str, utt: str | None, why: str) -> None:
        self.skipped.append(f"{where}: {utt}: {why}" if utt else f"{where}: {why}")

    def add_missing(self, where: str, utt: str, path: Path) -> None:
        self.missing.append(MissingRow(id=utt, path=path, where=where))

    def finish(self) -> None:
        problems = [f"{m.where}: {m.id}: audio file '{m.path}' does not exist" for m in self.missing] + self.skipped
        if problems and not self.skip_bad:
            more = f" (and {len(problems) - 1} more bad rows)" if len(problems) > 1 else ""
            raise CorpusError(f"{problems[0]}{more}; --skip-bad (skip_bad=True) leaves bad rows out and counts them")


class _Bad(Exception):
    """One row's problem, raised inside a reader and collected by BadRows."""


# --- the entry point ----------------------------------------------------------------------------


def parse_source(spec: str | Path) -> tuple[str, Path]:
    """("hf", Path(DIR)) of "hf:DIR"; a bare path gets `detect_format`'s answer."""
    text = str(spec)
    head, sep, rest = text.partition(":")
    if sep and head in FORMATS:
        return head, Path(rest)
    path = Path(text)
    return detect_format(path), path


def detect_format(path: Path) -> str:
    """The format of a bare path, from what it holds. A directory nothing else claims (or a path that
    does not exist) is taken as the official SLUE download, whose reader names what it expected."""
    name = path.name.lower()
    if path.is_file():
        if name.endswith((".parquet", ".arrow")):
            return "hf"
        if name.endswith((".jsonl.gz", ".json.gz")):
            return "lhotse"
        if name.endswith((".jsonl", ".json")):
            first = _first_json_line(path)
            if "task_labels" in first:
                return "manifest"
            if {"recording", "supervisions"} & set(first) or str(first.get("type", "")).endswith("Cut"):
                return "lhotse"
        raise CorpusError(
            f"cannot tell the format of '{path}'; name it: manifest:, hf:, lhotse: or kaldi: before the path"
        )
    if not path.is_dir():
        return "slue"
    if (path / "wav.scp").is_file() or any((d / "wav.scp").is_file() for d in _subdirs(path)):
        return "kaldi"
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        return "hf"
    if any(path.glob("*.parquet")) or any(path.glob("*/*.parquet")) or any(path.glob("*.arrow")):
        return "hf"
    if _cut_files(path):
        return "lhotse"
    return "slue"


def read_corpus(spec: str | Path, *, splits: tuple[str, ...] | None = None, skip_bad: bool = False) -> Corpus:
    """The rows of `spec` ("FORMAT:PATH" or a path) in `splits` (None: all; a row whose split the
    source does not say is always kept). Raises CorpusError for a layout it cannot read and, unless
    `skip_bad`, for the first bad row (module docstring)."""
    fmt, path = parse_source(spec)
    if fmt == "slue":
        raise CorpusError(
            f"'{path}' is read by spokenlm.slue.readers (the official SLUE TSVs), not as a corpus; "
            "for another format name it: manifest:, hf:, lhotse: or kaldi: before the path"
        )
    if not path.exists():
        raise CorpusError(f"{fmt} corpus '{path}' does not exist")
    bad = BadRows(path, skip_bad=skip_bad)
    reader = {"manifest": _read_manifest, "hf": _read_hf, "lhotse": _read_lhotse, "kaldi": _read_kaldi}[fmt]
    rows, columns = reader(path, splits, bad)
    bad.finish()
    if splits is not None:
        rows = [r for r in rows if r.split is None or r.split in splits]
    seen: dict[str, str] = {}
    for row in rows:
        if row.id in seen:
            raise CorpusError(f"{row.where}: utterance id {row.id!r} appears twice (first at {seen[row.id]})")
        seen[row.id] = row.where
    return Corpus(format=fmt, source=path, rows=tuple(rows), columns=frozenset(columns),
                  skipped=tuple(bad.skipped), missing=tuple(bad.missing))  # fmt: skip


def split_of_name(name: str) -> str | None:
    """The SLUE split a container's name says: train/fine-tune -> fine-tune, dev/valid(ation) -> dev,
    test -> test (as a word of the name: "cuts_train-clean-100", "validation-00000-of-00002")."""
    low = name.lower()
    if re.search(r"fine[-_]?tune", low):
        return "fine-tune"
    for token in re.split(r"[^a-z0-9]+", low):
        if token in SPLIT_NAMES:
            return SPLIT_NAMES[token]
    return None


def _split_value(value: object) -> str | None:
    """A row's own split cell, in SLUE's names where it is one of theirs."""
    if value is None or str(value).strip() == "":
        return None
    return SPLIT_NAMES.get(str(value).strip().lower(), str(value).strip())


def _wanted(split: str | None, splits: tuple[str, ...] | None) -> bool:
    return splits is None or split is None or split in splits


# --- labels, as every format spells them --------------------------------------------------------


def parse_ner(value: object, text: str | None, names: list[str] | None = None) -> tuple[tuple[str, int, int], ...]:
    """SLUE NER spans (tag, start_char, length) of a cell: None / "None" / [] (no entity), a SLUE
    Python literal "[['GPE', 3, 6], ...]", a list of [tag, start, length] or of {type, start, length}
    dicts, or the hub's dict of lists {"type": [...], "start": [...], "length": [...]}. Integer tags
    are ClassLabel ids, named by `names`. Raises _Bad."""
    if isinstance(value, str):
        if value.strip() in ("", "None", "[]"):
            return ()
        try:
            value = ast.literal_eval(value)  # never eval
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            raise _Bad(f"NER {value!r} is not a list of [tag, start, length]") from None
    if value is None:
        return ()
    if isinstance(value, dict):
        keys = [k for k in ("type", "start", "length") if k in value]
        if len(keys) != 3:
            raise _Bad(f"NER {value!r} needs type, start and length")
        columns = [list(value[k] or []) for k in keys]
        if len({len(c) for c in columns}) != 1:
            raise _Bad(f"NER {value!r}: type, start and length differ in length")
        value = list(zip(*columns))
    if not isinstance(value, (list, tuple)):
        raise _Bad(f"NER {value!r} is not a list of [tag, start, length]")
    spans = []
    for item in value:
        if isinstance(item, dict):
            item = (item.get("type", item.get("tag", item.get("label"))), item.get("start"), item.get("length"))
        ok = isinstance(item, (list, tuple)) and len(item) == 3
        tag, start, length = item if ok else (None, None, None)
        if isinstance(tag, int) and not isinstance(tag, bool) and names and 0 <= tag < len(names):
            tag = names[tag]
        ints = all(isinstance(x, int) and not isinstance(x, bool) for x in (start, length))
        if not (ok and isinstance(tag, str) and ints):
            raise _Bad(f"NER item {item!r} is not [tag, start, length]")
        if tag not in NER_TAGS:
            raise _Bad(f"unknown entity tag {tag!r}")
        if start < 0 or length <= 0 or (text is not None and start + length > len(text)):
            raise _Bad(f"NER span [{tag!r}, {start}, {length}] lies outside the {len(text or '')}-character text")
        spans.append((tag, start, length))
    return tuple(spans)


def _class_name(value: object, names: list[str] | None) -> object:
    if isinstance(value, int) and not isinstance(value, bool) and names:
        if not 0 <= value < len(names):
            raise _Bad(f"class id {value} is not one of the {len(names)} names")
        return names[value]
    return value


def parse_dialog_acts(value: object, names: list[str] | None = None) -> tuple[str, ...]:
    """Dialog acts of a cell: a list of names (or ClassLabel ids), or SLUE's Python literal."""
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value) if value.strip() else []
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            raise _Bad(f"dialog_acts {value!r} is not a list of act names") from None
    if value is None:
        value = []
    if not isinstance(value, (list, tuple)):
        raise _Bad(f"dialog_acts {value!r} is not a list of act names")
    acts = [_class_name(a, names) for a in value]
    unknown = sorted({repr(a) for a in acts if a not in DIALOG_ACTS})
    if unknown:
        raise _Bad(f"unknown dialog acts {', '.join(unknown)}")
    return tuple(a for a in DIALOG_ACTS if a in acts)


def _labels(cells: dict, names: dict[str, list[str]] | None = None) -> dict:
    """LABELS of one row from `cells` (canonical name -> raw cell, absent where the source lacks
    the column), parsed and checked. A row without text, where the source has a text column, is bad."""
    names = names or {}
    out: dict = {}
    if "normalized_text" in cells:
        text = cells["normalized_text"]
        if text is None or (isinstance(text, str) and not text.strip()):
            raise _Bad("no text")
        out["normalized_text"] = str(text)
    if cells.get("raw_text") is not None:
        out["raw_text"] = str(cells["raw_text"])
    text = out.get("normalized_text")
    if "normalized_ner" in cells:
        out["normalized_ner"] = parse_ner(cells["normalized_ner"], text, names.get("normalized_ner"))
    if "raw_ner" in cells:
        out["raw_ner"] = parse_ner(cells["raw_ner"], out.get("raw_text"), names.get("raw_ner"))
    if "sentiment" in cells and cells["sentiment"] is not None:
        out["sentiment"] = str(_class_name(cells["sentiment"], names.get("sentiment")))
    if "dialog_acts" in cells:
        out["dialog_acts"] = parse_dialog_acts(cells["dialog_acts"], names.get("dialog_acts"))
    if cells.get("speaker_id") is not None:
        out["speaker_id"] = str(cells["speaker_id"])
    return out


# --- audio --------------------------------------------------------------------------------------


def load_ref(ref: AudioRef) -> Tensor:
    """Mono 16 kHz float32 (S,) of `ref`: decoded whole by spokenlm.audio.load_audio, then cut at
    the nearest 16 kHz samples to [start_s, end_s]. A cut that ends more than DURATION_TOLERANCE_S
    past the recording is an AudioError; within it, the cut stops at the recording's end."""
    from spokenlm.audio import SAMPLE_RATE, AudioError, load_audio

    if ref.row is None:
        wav = load_audio(ref.path)
    else:
        wav = _decode_cell(_table_cell(ref.path, ref.row, ref.column), ref)
    if ref.start_s is None and ref.end_s is None:
        return wav
    start = 0 if ref.start_s is None else round(ref.start_s * SAMPLE_RATE)
    end = wav.shape[-1] if ref.end_s is None else round(ref.end_s * SAMPLE_RATE)
    recording_s = wav.shape[-1] / SAMPLE_RATE
    if ref.end_s is not None and ref.end_s > recording_s + DURATION_TOLERANCE_S:
        raise AudioError(f"cut of {ref.describe()} ends past the end of its {recording_s:.3f} s recording")
    if not 0 <= start < end:
        raise AudioError(f"cut of {ref.describe()} is empty or negative")
    return wav[start:end]


@functools.lru_cache(maxsize=4)
def _arrow_table(path: str):
    """An Arrow IPC file (`save_to_disk` writes the stream format), memory-mapped: rows are read
    without copying the whole file."""
    import pyarrow as pa

    source = pa.memory_map(path)
    try:
        return pa.ipc.open_stream(source).read_all()
    except pa.ArrowInvalid:
        return pa.ipc.open_file(pa.memory_map(path)).read_all()


@functools.lru_cache(maxsize=2)
def _parquet_row_group(path: str, group: int, column: str):
    import pyarrow.parquet as pq

    return pq.ParquetFile(path, memory_map=True).read_row_group(group, columns=[column]).column(column)


@functools.lru_cache(maxsize=8)
def _parquet_groups(path: str) -> tuple[int, ...]:
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(path, memory_map=True).metadata
    return tuple(meta.row_group(g).num_rows for g in range(meta.num_row_groups))


def _table_cell(path: Path, row: int, column: str) -> object:
    """One cell of an Arrow or parquet table (parquet: only its row group is read)."""
    if path.suffix == ".parquet":
        first = 0
        for group, count in enumerate(_parquet_groups(str(path))):
            if row < first + count:
                return _parquet_row_group(str(path), group, column)[row - first].as_py()
            first += count
        raise CorpusError(f"'{path}' has no row {row}")
    return _arrow_table(str(path)).column(column)[row].as_py()


def _decode_cell(cell: object, ref: AudioRef) -> Tensor:
    """A Hugging Face audio cell: {"bytes"} (an encoded file), {"array", "sampling_rate"}, {"path"},
    or bare bytes."""
    import numpy as np

    from spokenlm.audio import AudioError, load_audio

    if isinstance(cell, (bytes, bytearray)):
        return load_audio(bytes(cell))
    if isinstance(cell, dict):
        if cell.get("array") is not None:
            if not cell.get("sampling_rate"):
                raise AudioError(f"{ref.describe()}: a decoded audio array without its sampling_rate")
            return load_audio(np.asarray(cell["array"], dtype=np.float32), sample_rate=int(cell["sampling_rate"]))
        if cell.get("bytes"):
            return load_audio(cell["bytes"])
        if cell.get("path"):
            return load_audio(_cell_path(cell["path"], ref.path))
    raise AudioError(f"{ref.describe()}: the audio cell holds no bytes, array or path")


def _cell_path(value: str, table: Path) -> Path:
    path = Path(value)
    return path if path.is_absolute() else table.parent / path


# --- spokenlm manifest --------------------------------------------------------------------------


def _read_manifest(path: Path, splits, bad: BadRows) -> tuple[list[SpeechRow], set[str]]:
    """spokenlm's manifest.jsonl (spokenlm.train.data documents a line); SLUE names for its
    task_labels. Parsed here rather than by train.data.read_manifest, which imports this module."""
    names = {"text": "normalized_text", "raw_text": "raw_text", "entities": "normalized_ner",
             "raw_entities": "raw_ner", "sentiment": "sentiment", "dialog_acts": "dialog_acts"}  # fmt: skip
    rows, columns = [], set()
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"'{path}' line {n}"
        try:
            data = json.loads(line)
            utt, split, audio = str(data["id"]), str(data["split"]), path.parent / data["audio"]
            task_labels, tasks, duration = data["task_labels"], tuple(data.get("tasks", ["asr"])), float(data["duration_s"])
            speaker = data.get("speaker_id", (data.get("voice") or {}).get("speaker_id"))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise CorpusError(f"{where}: not a manifest row ({type(e).__name__}: {e})") from None
        if not _wanted(split, splits):
            continue
        cells = {names[k]: v for k, v in task_labels.items() if k in names}
        cells.setdefault("normalized_text", None)
        if speaker is not None:
            cells["speaker_id"] = speaker
        columns |= set(cells)
        if not audio.is_file():
            bad.add_missing(where, utt, audio)
            continue
        try:
            labels = _labels(cells)
        except _Bad as e:
            bad.add(where, utt, str(e))
            continue
        rows.append(SpeechRow(id=utt, audio=AudioRef(path=audio), split=split, labels=labels, duration_s=duration,
                              tasks=tasks, where=where))  # fmt: skip
    return rows, columns


# --- Hugging Face: save_to_disk directories and parquet -----------------------------------------


def _hf_tables(path: Path) -> list[tuple[str | None, Path]]:
    """(split, table file) of a `save_to_disk` Dataset or DatasetDict directory, parquet/Arrow files."""
    if path.is_file():
        return [(split_of_name(path.stem.split("-0")[0]) or split_of_name(path.parent.name), path)]
    if (path / "dataset_dict.json").is_file():
        splits = _json(path / "dataset_dict.json").get("splits") or [d.name for d in _subdirs(path)]
        return [(SPLIT_NAMES.get(s, s), f) for s in splits for _, f in _hf_tables(path / s)]
    if (path / "state.json").is_file():
        state = _json(path / "state.json")
        files = [path / f["filename"] for f in state.get("_data_files", [])]
        split = state.get("_split")
        split = SPLIT_NAMES.get(split, split) if split else split_of_name(path.name)
        return [(split, f) for f in files]
    files = sorted(path.glob("*.parquet")) + sorted(path.glob("*/*.parquet")) + sorted(path.glob("*.arrow"))
    if not files:
        raise CorpusError(
            f"'{path}' is not a Hugging Face dataset: expected dataset_dict.json or state.json "
            "(save_to_disk), or .parquet / .arrow files"
        )
    out = []
    for f in files:  # "validation-00000-of-00002.parquet", or "dev/00000.parquet"
        split = split_of_name(f.name.split("-0")[0]) if "-0" in f.name else None
        out.append((split or (split_of_name(f.parent.name) if f.parent != path else None), f))
    return out


def _hf_schema(file: Path):
    """(column names, features dict) of one table: datasets stores its features in the schema."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(file, memory_map=True) if file.suffix == ".parquet" else _arrow_table(str(file)).schema
    except (pa.ArrowInvalid, OSError) as e:
        raise CorpusError(f"could not read '{file}' as {'parquet' if file.suffix == '.parquet' else 'Arrow'}: {e}")
    features = {}
    meta = (schema.metadata or {}).get(b"huggingface")
    if meta:
        features = (json.loads(meta).get("info") or {}).get("features") or {}
    elif (file.parent / "dataset_info.json").is_file():
        features = _json(file.parent / "dataset_info.json").get("features") or {}
    return list(schema.names), features


def _feature_names(feature: object, key: str | None = None) -> list[str] | None:
    """ClassLabel names inside a features entry (nested Sequence/List features, or a struct's `key`)."""
    if isinstance(feature, list):  # older datasets spell a Sequence of X as [X]
        return _feature_names(feature[0], key) if feature else None
    if not isinstance(feature, dict):
        return None
    if isinstance(feature.get("names"), list):
        return feature["names"]
    if key is not None and key in feature:
        return _feature_names(feature[key])
    for inner in ("feature", "dtype"):
        if isinstance(feature.get(inner), (dict, list)):
            return _feature_names(feature[inner], key)
    return None


def _read_hf(path: Path, splits, bad: BadRows) -> tuple[list[SpeechRow], set[str]]:
    rows: list[SpeechRow] = []
    columns_seen: set[str] = set()
    for split, file in _hf_tables(path):
        if not _wanted(split, splits):
            continue
        names, features = _hf_schema(file)
        audio = "audio" if "audio" in names else next(
            (c for c in names if isinstance(features.get(c), dict) and features[c].get("_type") == "Audio"), None
        )
        id_column = next((c for c in ID_COLUMNS if c in names), None)
        if audio is None or id_column is None:
            what = "audio column ('audio', or one of type Audio)" if audio is None else f"id column ({', '.join(ID_COLUMNS)})"
            raise CorpusError(f"'{file}' has an unknown column layout: no {what}; it has: {', '.join(names)}")
        found = {label: next((c for c in aliases if c in names), None) for label, aliases in COLUMN_ALIASES.items()}
        found = {label: c for label, c in found.items() if c is not None}
        columns_seen |= set(found)
        class_names = {
            "normalized_ner": _feature_names(features.get(found.get("normalized_ner", "")), "type"),
            "raw_ner": _feature_names(features.get(found.get("raw_ner", "")), "type"),
            "sentiment": _feature_names(features.get(found.get("sentiment", ""))),
            "dialog_acts": _feature_names(features.get(found.get("dialog_acts", ""))),
        }
        table = _arrow_table(str(file)) if file.suffix != ".parquet" else _parquet_table(file)
        data = {c: table.column(c).to_pylist() for c in names if c != audio}
        cells_audio = table.column(audio)
        for i in range(table.num_rows):
            where = f"'{file}' row {i}"
            utt = str(data[id_column][i])
            row_split = _split_value(data["split"][i]) if "split" in data else None
            row_split = row_split or split
            if not _wanted(row_split, splits):
                continue
            try:
                ref, duration = _hf_audio(cells_audio[i].as_py(), file, i, audio, where, utt, bad)
                if ref is None:
                    continue
                start = data["start_second"][i] if "start_second" in data else None
                end = data["end_second"][i] if "end_second" in data else None
                if start is not None and end is not None:  # the hub's SLUE-VoxCeleb: the utterance is a cut
                    start, end = float(start), float(end)
                    if not (math.isfinite(start) and math.isfinite(end) and 0 <= start < end):
                        raise _Bad(f"cut [{start}, {end}] s is empty or negative")
                    ref, duration = replace(ref, start_s=start, end_s=end), end - start
                labels = _labels({label: data[c][i] for label, c in found.items()}, class_names)
            except _Bad as e:
                bad.add(where, utt, str(e))
                continue
            rows.append(SpeechRow(id=utt, audio=ref, split=row_split, labels=labels, duration_s=duration, where=where))
    return rows, columns_seen


def _parquet_table(file: Path):
    import pyarrow.parquet as pq

    return pq.read_table(file, memory_map=True)


def _hf_audio(cell: object, file: Path, i: int, column: str, where: str, utt: str, bad: BadRows):
    """(AudioRef, duration or None) of one audio cell; (None, None) when its file is missing."""
    if isinstance(cell, (bytes, bytearray)) and cell:
        return AudioRef(path=file, row=i, column=column), None
    if not isinstance(cell, dict):
        raise _Bad("no audio" if cell is None else f"audio cell of type {type(cell).__name__} is not an Audio struct")
    if cell.get("array") is not None:
        if not cell.get("sampling_rate"):
            raise _Bad("a decoded audio array without its sampling_rate")
        return AudioRef(path=file, row=i, column=column), len(cell["array"]) / float(cell["sampling_rate"])
    if cell.get("bytes"):
        return AudioRef(path=file, row=i, column=column), None
    if cell.get("path"):  # not embedded: a file beside (or named absolutely by) the table
        audio = _cell_path(cell["path"], file)
        if not audio.is_file():
            bad.add_missing(where, utt, audio)
            return None, None
        return AudioRef(path=audio), None
    raise _Bad("no audio: the audio cell holds no bytes, array or path")


# --- Lhotse CutSet manifests --------------------------------------------------------------------


def _cut_files(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_file() and "cuts" in p.name and p.name.endswith((".jsonl", ".jsonl.gz")))


def _read_lhotse(path: Path, splits, bad: BadRows) -> tuple[list[SpeechRow], set[str]]:
    files = [(split_of_name(path.name), path)] if path.is_file() else [(split_of_name(f.name), f) for f in _cut_files(path)]
    if not files:
        raise CorpusError(f"'{path}' holds no Lhotse cuts manifest (*cuts*.jsonl or *cuts*.jsonl.gz)")
    rows: list[SpeechRow] = []
    columns = {"normalized_text"}
    for split, file in files:
        if _wanted(split, splits):
            rows += _read_cuts(file, split, splits, bad, columns)
    return rows, columns


def _read_cuts(file: Path, split: str | None, splits, bad: BadRows, columns: set[str]) -> list[SpeechRow]:
    import gzip

    from lhotse import MonoCut
    from lhotse.serialization import deserialize_item

    opener = gzip.open if file.name.endswith(".gz") else open
    rows = []
    try:
        with opener(file, "rt", encoding="utf-8") as f:
            lines = list(f)
    except (OSError, UnicodeDecodeError, EOFError) as e:
        raise CorpusError(f"could not read Lhotse manifest '{file}': {e}") from e
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"'{file}' line {n}"
        try:
            data = json.loads(line)
        except json.JSONDecodeError as e:
            raise CorpusError(f"{where} is not JSON ({e}): not a Lhotse jsonl manifest") from None
        cut_id = data.get("id") if isinstance(data, dict) else None
        try:
            cut = deserialize_item(data)
        except Exception as e:  # lhotse raises what its dataclasses do (KeyError, TypeError, ValueError, ...)
            bad.add(where, cut_id, f"not a Lhotse cut ({type(e).__name__}: {e})")
            continue
        if not isinstance(cut, MonoCut):
            bad.add(where, cut_id, f"a {type(cut).__name__} is not read: only MonoCuts (one recording each)")
            continue
        try:
            audio = _cut_audio(cut)
        except _Bad as e:
            bad.add(where, cut.id, str(e))
            continue
        if not audio.is_file():
            bad.add_missing(where, cut.id, audio)
            continue
        if not cut.supervisions:
            bad.add(where, cut.id, "no text: the cut has no supervision")
            continue
        recording = cut.recording
        for sup in cut.supervisions:
            custom = {**(cut.custom or {}), **(sup.custom or {})}
            cells: dict = {"normalized_text": sup.text, "speaker_id": sup.speaker}
            for label, aliases in COLUMN_ALIASES.items():
                key = next((a for a in aliases if a in custom), None)
                if key is not None and label not in ("normalized_text", "speaker_id"):
                    cells[label] = custom[key]
                    columns.add(label)
            row_split = _split_value(custom.get("split")) or split
            if not _wanted(row_split, splits):
                continue
            start = cut.start + sup.start  # a supervision's start is relative to its cut
            end = start + sup.duration
            try:
                if start < -DURATION_TOLERANCE_S or sup.duration <= 0:
                    raise _Bad(f"segment [{start:g}, {end:g}] s is empty or starts before its recording")
                if end > recording.duration + DURATION_TOLERANCE_S:
                    raise _Bad(
                        f"segment [{start:g}, {end:g}] s ends past the end of its recording "
                        f"{recording.id!r} ({recording.duration:g} s)"
                    )
                labels = _labels(cells)
            except _Bad as e:
                bad.add(where, sup.id, str(e))
                continue
            whole = start <= 0 and end >= recording.duration - 1 / recording.sampling_rate
            ref = AudioRef(path=audio) if whole else AudioRef(path=audio, start_s=max(0.0, start), end_s=end)
            rows.append(SpeechRow(id=sup.id, audio=ref, split=row_split, labels=labels, duration_s=sup.duration,
                                  where=where))  # fmt: skip
    return rows


def _cut_audio(cut) -> Path:
    """The one file a MonoCut's audio comes from; everything else is refused (and never run)."""
    recording = cut.recording
    if recording is None:
        raise _Bad("the cut has no recording (features-only cuts are not read)")
    transforms = [t.get("name", t) if isinstance(t, dict) else type(t).__name__ for t in recording.transforms or []]
    if any(t != "Resample" for t in transforms):  # spokenlm resamples anyway; other transforms change the audio
        raise _Bad(f"recording {recording.id!r} has transforms {transforms} that spokenlm does not apply")
    if len(recording.sources) != 1:
        raise _Bad(f"recording {recording.id!r} has {len(recording.sources)} audio sources; one file is read")
    source = recording.sources[0]
    if source.type == "command":
        raise _Bad(f"recording {recording.id!r} is a command ({source.source!r}); spokenlm never runs commands "
                   "from data files: write the audio to a file and name that")  # fmt: skip
    if source.type != "file":
        raise _Bad(f"recording {recording.id!r} has a {source.type!r} audio source; only files are read")
    return Path(source.source)


# --- Kaldi / ESPnet data directories ------------------------------------------------------------


def _subdirs(path: Path) -> list[Path]:
    return sorted(d for d in path.iterdir() if d.is_dir()) if path.is_dir() else []


def _read_kaldi(path: Path, splits, bad: BadRows) -> tuple[list[SpeechRow], set[str]]:
    if (path / "wav.scp").is_file():
        dirs = [(split_of_name(path.name), path)]
    else:
        dirs = [(split_of_name(d.name) or d.name, d) for d in _subdirs(path) if (d / "wav.scp").is_file()]
    if not dirs:
        raise CorpusError(f"'{path}' is not a Kaldi data dir: no wav.scp in it (or in a directory per split)")
    rows: list[SpeechRow] = []
    columns: set[str] = set()
    for split, d in dirs:
        if _wanted(split, splits):
            rows += _read_kaldi_dir(d, split, bad, columns)
    return rows, columns


def _kaldi_table(file: Path) -> dict[str, tuple[str, int]]:
    """`key value...` lines of a Kaldi table file: {key: (value, line number)}."""
    out: dict[str, tuple[str, int]] = {}
    for n, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        key, _, value = line.strip().partition(" ")
        if key in out:
            raise CorpusError(f"'{file}' line {n}: {key!r} appears twice (first on line {out[key][1]})")
        out[key] = (value.strip(), n)
    return out


def _read_kaldi_dir(d: Path, split: str | None, bad: BadRows, columns: set[str]) -> list[SpeechRow]:
    wav_scp = _kaldi_table(d / "wav.scp")
    optional = {name: _kaldi_table(d / name) for name in ("text", "segments", "utt2spk", "utt2dur", "reco2dur")
                if (d / name).is_file()}  # fmt: skip
    extra = {label: _kaldi_table(d / f"utt2{label}") for label in LABELS
             if label not in ("normalized_text", "speaker_id") and (d / f"utt2{label}").is_file()}  # fmt: skip
    if "text" in optional:
        columns.add("normalized_text")
    columns |= set(extra)

    recordings: dict[str, Path] = {}
    for rec, (value, n) in wav_scp.items():
        where = f"'{d / 'wav.scp'}' line {n}"
        if value.endswith("|"):
            bad.add(where, rec, f"is a piped command ({value!r}); spokenlm never runs commands from data files: "
                    "write the audio to a file and list its path")  # fmt: skip
        elif re.search(r"\.ark:\d+$", value):
            bad.add(where, rec, f"{value!r} is an offset into a Kaldi archive; list an audio file instead")
        elif not value:
            bad.add(where, rec, "no audio path")
        else:
            recordings[rec] = Path(value)

    # (utt, rec, start, end or None, where) of each utterance: segments, or one per recording
    utterances = []
    if "segments" in optional:
        for utt, (value, n) in optional["segments"].items():
            where = f"'{d / 'segments'}' line {n}"
            fields = value.split()
            try:
                rec, start, end = fields[0], float(fields[1]), float(fields[2])
            except (IndexError, ValueError):
                bad.add(where, utt, f"{value!r} is not 'recording start end'")
                continue
            if rec not in wav_scp:
                bad.add(where, utt, f"recording {rec!r} is not in wav.scp")
            elif rec in recordings:
                utterances.append((utt, rec, start, None if end == -1 else end, where))
    else:
        for rec, (_, n) in wav_scp.items():
            if rec in recordings:
                utterances.append((rec, rec, None, None, f"'{d / 'wav.scp'}' line {n}"))

    rows = []
    durations: dict[str, float | None] = {}
    for utt, rec, start, end, where in utterances:
        audio = recordings[rec]
        if not audio.is_file():
            bad.add_missing(where, utt, audio)
            continue
        cells: dict = {label: table[utt][0] for label, table in extra.items() if utt in table}
        if "text" in optional:
            cells["normalized_text"] = optional["text"][utt][0] if utt in optional["text"] else None
        if utt in optional.get("utt2spk", {}):
            cells["speaker_id"] = optional["utt2spk"][utt][0]
        try:
            missing = [label for label in extra if utt not in extra[label]]
            if missing:
                raise _Bad(f"no {', '.join(missing)} (utt2{missing[0]} has no line for it)")
            if start is not None and (start < 0 or (end is not None and end <= start)):
                raise _Bad(f"segment [{start:g}, {end:g}] s is empty or negative")
            if end is not None:
                if rec not in durations:
                    durations[rec] = _recording_duration(rec, audio, optional.get("reco2dur"))
                total = durations[rec]
                if total is not None and end > total + DURATION_TOLERANCE_S:
                    raise _Bad(f"segment [{start:g}, {end:g}] s ends past the end of its recording {rec!r} ({total:g} s)")
            labels = _labels(cells)
        except _Bad as e:
            bad.add(where, utt, str(e))
            continue
        duration = float(optional["utt2dur"][utt][0]) if utt in optional.get("utt2dur", {}) else (
            end - (start or 0.0) if end is not None else None)  # fmt: skip
        ref = AudioRef(path=audio) if start is None else AudioRef(path=audio, start_s=start, end_s=end)
        rows.append(SpeechRow(id=utt, audio=ref, split=split, labels=labels, duration_s=duration, where=where))
    if "text" in optional:  # a transcript with no audio is input lost: named, like any bad row
        listed = {u for u, *_ in utterances} | (set(optional["segments"]) if "segments" in optional else set(wav_scp))
        for utt, (_, n) in optional["text"].items():
            if utt not in listed:
                bad.add(f"'{d / 'text'}' line {n}", utt, "has text but no audio (not in wav.scp or segments)")
    return rows


def _recording_duration(rec: str, audio: Path, reco2dur: dict | None) -> float | None:
    """Seconds of a recording: reco2dur when the dir has it, else the file's header (soundfile);
    None when neither can tell (the cut is then checked when the audio is decoded)."""
    if reco2dur and rec in reco2dur:
        try:
            return float(reco2dur[rec][0])
        except ValueError:
            raise _Bad(f"reco2dur {reco2dur[rec][0]!r} of {rec!r} is not a number") from None
    import soundfile as sf

    try:
        return sf.info(str(audio)).duration
    except (RuntimeError, sf.LibsndfileError):
        return None


# --- small helpers ------------------------------------------------------------------------------


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorpusError(f"could not parse '{path}': {e}") from e
    if not isinstance(data, dict):
        raise CorpusError(f"'{path}' is not a JSON object")
    return data


def _first_json_line(path: Path) -> dict:
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.strip():
                try:
                    data = json.loads(line)
                except json.JSONDecodeError:
                    return {}
                return data if isinstance(data, dict) else {}
    return {}


def duration_of(ref: AudioRef) -> float:
    """Seconds of the audio `ref` names, from the file's header where possible, else by decoding."""
    if ref.start_s is not None and ref.end_s is not None:
        return ref.end_s - ref.start_s
    if ref.row is None:
        import soundfile as sf

        try:
            total = sf.info(str(ref.path)).duration
            return total - (ref.start_s or 0.0)
        except (RuntimeError, sf.LibsndfileError):
            pass
    from spokenlm.audio import SAMPLE_RATE

    return load_ref(ref).shape[-1] / SAMPLE_RATE
