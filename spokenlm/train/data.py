"""Speech training data: the corpus manifest (manifest.jsonl) read into utterances, audio held in
memory as int16, and duration-bucketed batches.

One manifest line: {"id", "split", "audio" (path relative to the manifest), "duration_s", "voice",
"task_labels": {...}, "tasks": [...]}; the label keys are those `spokenlm.tasks.TASKS[t].target`
reads. Written by `spokenlm data synth`.

A recipe's `manifest:` may also name a corpus held another way (spokenlm.corpora): "hf:DIR",
"lhotse:cuts.jsonl.gz", "kaldi:DATA_DIR" (or a bare path of one; "manifest:FILE" is this format).
Its rows become the same utterances: labels under the task_labels keys, tasks from the labels the
row has (asr with a transcript; ner, sentiment, dialog-act with those labels; none without a
transcript: audio only), and the audio loaded by spokenlm.corpora.load_ref (a cut, a table row).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from spokenlm.audio import SAMPLE_RATE, AudioBatch, batch_audio, load_audio
from spokenlm.corpora import AudioRef, load_ref


@dataclass(frozen=True)
class Utterance:
    id: str
    split: str
    audio: Path
    duration_s: float
    labels: dict = field(repr=False)
    tasks: tuple[str, ...] = ("asr",)
    voice: dict = field(default_factory=dict, repr=False)
    audio_ref: AudioRef | None = field(default=None, repr=False)  # other formats: a cut or a table row of `audio`
    stream: str = ""  # the corpus stream it was made from (`spokenlm.data.synth.STREAMS`; "" where unknown)


def id_hash_order(utts: Sequence[Utterance]) -> list[Utterance]:
    """`utts` in id-hash order: their first N are a fixed sample that mixes the sources (the ids of
    one corpus share a prefix), the same on every call; what the recipes' and benches' held-out
    samples are cut from."""
    return sorted(utts, key=lambda u: hashlib.sha1(u.id.encode()).hexdigest())


def read_manifest(path: str | Path | Sequence[str | Path], *, splits: tuple[str, ...] | None = None,
                  tasks: tuple[str, ...] | None = None, max_duration_s: float | None = None,
                  skip_bad: bool = False) -> list[Utterance]:  # fmt: skip
    """Utterances of `path`, keeping those in `splits`, having any of `tasks`, not longer than max.

    `path` may be several manifests (the synthetic corpus and the FSDD recordings, say): their
    utterances are concatenated in order, and an id found in two of them is an error. Each may be
    "FORMAT:PATH" of another corpus format (module docstring); its bad rows are an error naming the
    first, unless `skip_bad`."""
    if not isinstance(path, (str, Path)):
        utts = [u for p in path for u in read_manifest(p, splits=splits, tasks=tasks, max_duration_s=max_duration_s,
                                                       skip_bad=skip_bad)]  # fmt: skip
        seen: set[str] = set()
        for u in utts:
            if u.id in seen:
                raise ValueError(f"utterance id {u.id} appears in more than one of the manifests {list(map(str, path))}")
            seen.add(u.id)
        return utts
    fmt, path = _format_of(path)
    if fmt != "manifest":
        utts = _corpus_utterances(f"{fmt}:{path}", splits, skip_bad)
        return [u for u in utts if _keep(u, tasks, max_duration_s)]
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            utt = Utterance(
                id=row["id"],
                split=row["split"],
                audio=path.parent / row["audio"],
                duration_s=float(row["duration_s"]),
                labels=row["task_labels"],
                tasks=tuple(row.get("tasks", ["asr"])),
                voice=row.get("voice", {}),
                stream=row.get("stream", ""),
            )
        except (KeyError, ValueError, TypeError) as e:
            raise ValueError(f"{path}:{n}: not a manifest row ({e})") from e
        if splits and utt.split not in splits:
            continue
        if _keep(utt, tasks, max_duration_s):
            out.append(utt)
    return out


def transcribed_sample(path: str | Path, split: str, limit: int, max_duration_s: float) -> list[Utterance]:
    """The first `limit` (0: all) ASR utterances of `split` in one manifest that have a transcript
    and last at most `max_duration_s`, in id-hash order: what the transcriber's recipes read."""
    utts = [u for u in read_manifest(path, splits=(split,), tasks=("asr",))
            if u.labels.get("text") and u.duration_s <= max_duration_s]  # fmt: skip
    utts = id_hash_order(utts)
    return utts[:limit] if limit else utts


def _keep(utt: Utterance, tasks: tuple[str, ...] | None, max_duration_s: float | None) -> bool:
    if tasks and not set(utt.tasks) & set(tasks):
        return False
    return not (max_duration_s and utt.duration_s > max_duration_s)


def _format_of(path: str | Path) -> tuple[str, Path]:
    """("manifest" | "hf" | "lhotse" | "kaldi", path) of a recipe's manifest entry. What spokenlm.corpora
    cannot place (a missing file, an empty manifest) is read as a manifest, which names the problem."""
    from spokenlm.corpora import CorpusError, parse_source

    try:
        fmt, found = parse_source(path)
    except CorpusError:
        return "manifest", Path(path)
    return ("manifest" if fmt == "slue" else fmt), found


def _corpus_utterances(spec: str, splits: tuple[str, ...] | None, skip_bad: bool) -> list[Utterance]:
    """Utterances of another corpus format, labels keyed as task_labels (module docstring)."""
    from spokenlm.corpora import duration_of, read_corpus

    corpus = read_corpus(spec, splits=splits, skip_bad=skip_bad)
    out = []
    for row in corpus.rows:
        if row.split is None:
            raise ValueError(
                f"{row.where}: cannot tell the split of {row.id!r}: name the split directories or files of "
                f"'{corpus.source}' train/dev/test (or give a split column / custom field) to train on it"
            )
        lab = row.labels
        labels: dict = {}
        tasks: list[str] = []
        if "normalized_text" in lab:
            text = lab["normalized_text"]
            labels |= {"text": text, "raw_text": lab.get("raw_text", text),
                       "entities": [list(s) for s in lab.get("normalized_ner", ())],
                       "raw_entities": [list(s) for s in lab.get("raw_ner", ())]}  # fmt: skip
            tasks.append("asr")
            if "normalized_ner" in lab:
                tasks.append("ner")
        if "sentiment" in lab:
            labels["sentiment"] = lab["sentiment"]
            tasks.append("sentiment")
        if "dialog_acts" in lab:
            labels["dialog_acts"] = list(lab["dialog_acts"])
            tasks.append("dialog-act")
        duration = row.duration_s if row.duration_s is not None else duration_of(row.audio)
        out.append(Utterance(id=row.id, split=row.split, audio=row.audio.path, duration_s=float(duration),
                             labels=labels, tasks=tuple(tasks), audio_ref=row.audio))  # fmt: skip
    return out


class AudioCache:
    """Decoded 16 kHz audio of utterances as int16 in memory (10 h is ~1.2 GB), loaded on first use."""

    def __init__(self) -> None:
        self._wavs: dict[str, np.ndarray] = {}

    def get(self, utt: Utterance) -> torch.Tensor:
        if utt.id not in self._wavs:
            wav = load_ref(utt.audio_ref) if utt.audio_ref is not None else load_audio(utt.audio)
            self._wavs[utt.id] = (wav.clamp(-1, 1) * 32767).round().to(torch.int16).numpy()
        return torch.from_numpy(self._wavs[utt.id].astype(np.float32) / 32767)

    def batch(self, utts: list[Utterance]) -> AudioBatch:
        return batch_audio([self.get(u) for u in utts])

    def drop(self, utt: Utterance) -> None:
        """Forget one utterance's audio (e.g. once its encoder features are cached)."""
        self._wavs.pop(utt.id, None)


def duration_batches(utts: list[Utterance], *, max_batch_s: float, seed: int, shuffle: bool = True) -> list[list[int]]:
    """Indices grouped so similar durations share a batch (little padding), each batch's total
    padded audio under `max_batch_s`; batch order shuffled by `seed`."""
    order = sorted(range(len(utts)), key=lambda i: utts[i].duration_s)
    batches, current = [], []
    for i in order:
        longest = max([utts[j].duration_s for j in current] + [utts[i].duration_s])
        if current and longest * (len(current) + 1) > max_batch_s:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    if shuffle:
        random.Random(seed).shuffle(batches)
    return batches


def total_hours(utts: list[Utterance]) -> float:
    return sum(u.duration_s for u in utts) / 3600


class BatchSchedule:
    """Which utterances each worker trains on at each global step, the same in every worker and on
    every resume: epoch e shuffles duration buckets with seed + e, step j of an epoch takes buckets
    [j·W, (j+1)·W) and worker r the r-th of them (a leftover of fewer than W buckets is skipped)."""

    def __init__(self, utts: list[Utterance], *, max_batch_s: float, seed: int, workers: int) -> None:
        self.utts, self.max_batch_s, self.seed, self.workers = utts, max_batch_s, seed, workers
        self.steps_per_epoch = len(duration_batches(utts, max_batch_s=max_batch_s, seed=seed)) // workers
        if self.steps_per_epoch < 1:
            raise ValueError(f"{len(utts)} training utterances make less than one batch for each of {workers} workers")
        self._epoch: tuple[int, list[list[int]]] = (-1, [])  # the current epoch's buckets

    def at(self, step: int) -> list[list[Utterance]]:
        """The W batches of `step`; worker r trains on [r]."""
        epoch, j = divmod(step, self.steps_per_epoch)
        if self._epoch[0] != epoch:
            self._epoch = (epoch, duration_batches(self.utts, max_batch_s=self.max_batch_s, seed=self.seed + epoch))
        buckets = self._epoch[1][j * self.workers : (j + 1) * self.workers]
        return [[self.utts[i] for i in bucket] for bucket in buckets]


def speech_utterances(
    manifest: str, splits: tuple[str, ...], *, max_duration_s: float, min_samples: int
) -> list[Utterance]:
    """Utterances of `splits` from `max_duration_s` down to one encoder frame (`min_samples`)."""
    utts = read_manifest(manifest, splits=splits, max_duration_s=max_duration_s)
    utts = [u for u in utts if u.duration_s * SAMPLE_RATE >= min_samples + 1]
    if not utts:
        raise ValueError(f"{manifest} has no usable utterance in splits {', '.join(splits)}")
    return utts
