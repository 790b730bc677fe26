"""Speech training data: the corpus manifest (manifest.jsonl) read into utterances, audio held in
memory as int16, and duration-bucketed batches.

One manifest line: {"id", "split", "audio" (path relative to the manifest), "duration_s", "voice",
"task_labels": {...}, "tasks": [...]}; the label keys are those `spokenlm.tasks.TASKS[t].target`
reads. Written by `spokenlm data synth`.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from spokenlm.audio import SAMPLE_RATE, AudioBatch, batch_audio, load_audio


@dataclass(frozen=True)
class Utterance:
    id: str
    split: str
    audio: Path
    duration_s: float
    labels: dict = field(repr=False)
    tasks: tuple[str, ...] = ("asr",)
    voice: dict = field(default_factory=dict, repr=False)


def read_manifest(path: str | Path | Sequence[str | Path], *, splits: tuple[str, ...] | None = None,
                  tasks: tuple[str, ...] | None = None, max_duration_s: float | None = None) -> list[Utterance]:  # fmt: skip
    """Utterances of `path`, keeping those in `splits`, having any of `tasks`, not longer than max.

    `path` may be several manifests (the synthetic corpus and the FSDD recordings, say): their
    utterances are concatenated in order, and an id found in two of them is an error."""
    if not isinstance(path, (str, Path)):
        utts = [u for p in path for u in read_manifest(p, splits=splits, tasks=tasks, max_duration_s=max_duration_s)]
        seen: set[str] = set()
        for u in utts:
            if u.id in seen:
                raise ValueError(f"utterance id {u.id} appears in more than one of the manifests {list(map(str, path))}")
            seen.add(u.id)
        return utts
    path = Path(path)
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
            )
        except (KeyError, ValueError, TypeError) as e:
            raise ValueError(f"{path}:{n}: not a manifest row ({e})") from e
        if splits and utt.split not in splits:
            continue
        if tasks and not set(utt.tasks) & set(tasks):
            continue
        if max_duration_s and utt.duration_s > max_duration_s:
            continue
        out.append(utt)
    return out


class AudioCache:
    """Decoded 16 kHz audio of utterances as int16 in memory (10 h is ~1.2 GB), loaded on first use."""

    def __init__(self) -> None:
        self._wavs: dict[str, np.ndarray] = {}

    def get(self, utt: Utterance) -> torch.Tensor:
        if utt.id not in self._wavs:
            wav = load_audio(utt.audio)
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
