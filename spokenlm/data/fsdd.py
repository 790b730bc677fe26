"""Real human speech for the corpus: the Free Spoken Digit Dataset (FSDD) as a manifest.

FSDD (Jackson et al., CC BY-SA 4.0) holds isolated English digits, "zero" to "nine", spoken by six
people, many takes each; ../shared/data/speech/fsdd_train has takes 5-49 with a ``manifest.tsv``
(file, digit, speaker, transcript). ``write_fsdd_manifest`` turns it into a manifest.jsonl in the
corpus format (spokenlm/train/data.py), ASR only, with its own held-out splits so the digit accuracy
the default bundle reports is on recordings it never trained on:

- ``test``: every take of the held-out speakers (a voice never heard), plus takes 5-9 of the others;
- ``dev``: takes 10-12 of the other speakers;
- ``fine-tune``: the rest.

The audio stays where it is: the manifest points at it by relative path. Recipes read this manifest
next to the synthetic corpus (``manifest: [../corpus/manifest.jsonl, ../corpus-fsdd/manifest.jsonl]``).
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import soundfile as sf

HELDOUT_SPEAKERS = ("yweweler",)  # all their takes are test
TEST_TAKES = range(5, 10)  # of the other speakers
DEV_TAKES = range(10, 13)
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def fsdd_split(speaker: str, take: int, heldout_speakers: tuple[str, ...] = HELDOUT_SPEAKERS) -> str:
    if speaker in heldout_speakers or take in TEST_TAKES:
        return "test"
    return "dev" if take in DEV_TAKES else "fine-tune"


def write_fsdd_manifest(source: str | Path, out: str | Path, *, heldout_speakers: tuple[str, ...] = HELDOUT_SPEAKERS) -> Path:
    """Write OUT/manifest.jsonl for the FSDD recordings listed in SOURCE/manifest.tsv; returns its path.

    ValueError naming the row for a file that is missing, a transcript that is not the digit's word,
    or a file name that does not read ``<digit>_<speaker>_<take>.wav``.
    """
    source, out = Path(source), Path(out)
    table = source / "manifest.tsv"
    if not table.is_file():
        raise FileNotFoundError(f"{source} has no manifest.tsv: not an FSDD folder")
    with table.open(newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    if not rows or not {"file", "digit", "speaker", "transcript"} <= set(rows[0]):
        raise ValueError(f"{table}: expected columns file, digit, speaker, transcript")
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for n, row in enumerate(rows, 2):  # line 1 is the header
        where = f"{table}:{n}"
        stem = Path(row["file"]).stem
        parts = stem.split("_")
        if len(parts) != 3 or not parts[0].isdigit() or not parts[2].isdigit():
            raise ValueError(f"{where}: file name {row['file']!r} is not <digit>_<speaker>_<take>.wav")
        digit, speaker, take = int(parts[0]), parts[1], int(parts[2])
        text = row["transcript"].strip().lower()
        if not 0 <= digit <= 9 or text != DIGIT_WORDS[digit] or speaker != row["speaker"]:
            raise ValueError(f"{where}: transcript {row['transcript']!r} / speaker {row['speaker']!r} do not match {row['file']!r}")
        audio = source / row["file"]
        if not audio.is_file():
            raise ValueError(f"{where}: audio file {audio} is missing")
        info = sf.info(str(audio))
        lines.append(json.dumps({
            "id": f"fsdd_{stem}",
            "split": fsdd_split(speaker, take, heldout_speakers),
            "audio": os.path.relpath(audio, out),
            "duration_s": round(info.frames / info.samplerate, 4),
            "voice": {"engine": "human", "speaker": speaker, "corpus": "fsdd"},
            "tasks": ["asr"],
            "task_labels": {"text": text, "raw_text": text},
        }))  # fmt: skip
    manifest = out / "manifest.jsonl"
    tmp = manifest.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in lines))
    os.replace(tmp, manifest)
    return manifest
