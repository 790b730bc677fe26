"""Speech training data: the corpus manifest (manifest.jsonl) read into utterances, audio held in
memory as int16, and duration-bucketed batches.

One manifest line: {"id", "split", "audio" (path relative to the manifest), "duration_s", "voice",
"task_labels": {...}, "tasks": [...]}; the label keys are those `spokenlm.tasks.TASKS[t].target`
reads. Written by `spokenlm data synth`.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from spokenlm.audio import AudioBatch, batch_audio, load_audio


@dataclass(frozen=True)
class Utterance:
    id: str
    split: str
    audio: Path
    duration_s: float
    labels: dict = field(repr=False)
    tasks: tuple[str, ...] = ("asr",)
    voice: dict = field(default_factory=dict, repr=False)


def read_manifest(path: str | Path, *, splits: tuple[str, ...] | None = None, tasks: tuple[str, ...] | None = None,
                  max_duration_s: float | None = None) -> list[Utterance]:  # fmt: skip
    """Utterances of `path`, keeping those in `splits`, having any of `tasks`, not longer than max."""
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

