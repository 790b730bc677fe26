"""A tiny speech corpus for recipe tests: espeak-ng clips with a manifest.jsonl in the corpus format."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import soundfile as sf

SENTENCES = [
    "the birch canoe slid on the smooth planks", "glue the sheet to the dark blue background",
    "it is easy to tell the depth of a well", "these days a chicken leg is a rare dish",
    "rice is often served in round bowls", "the juice of lemons makes fine punch",
    "the box was thrown beside the parked truck", "the hogs were fed chopped corn and garbage",
    "four hours of steady work faced us", "a large size in stockings is hard to sell",
    "the boy was there when the sun rose", "a rod is used to catch pink salmon",
    "the source of the huge river is the clear spring", "kick the ball straight and follow through",
    "help the woman get back to her feet", "a pot of tea helps to pass the evening",
    "smoky fires lack flame and heat", "the soft cushion broke the man's fall",
    "the salt breeze came across from the sea", "the girl at the booth sold fifty bonds",
]  # fmt: skip
HELDOUT = ["the small pup gnawed a hole in the sock", "the fish twisted and turned on the bent hook"]


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """Manifest path; 20 fine-tune clips (two voices) and 2 dev clips, 16 kHz wav."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (make setup installs it)")
    root = tmp_path_factory.mktemp("tiny-corpus")
    (root / "audio").mkdir()
    rows = []
    items = [(s, "fine-tune", v) for s in SENTENCES for v in ("en-us",)] + [(s, "dev", "en-us") for s in HELDOUT]
    for i, (text, split, voice) in enumerate(items):
        raw = root / "audio" / f"raw{i}.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", "150", "-w", str(raw), text], check=True)
        wav, sr = sf.read(raw, dtype="float32")
        import torch
        import torchaudio

        wav16 = torchaudio.functional.resample(torch.from_numpy(wav), sr, 16000).numpy()
        out = root / "audio" / f"u{i}.wav"
        sf.write(out, wav16, 16000)
        raw.unlink()
        rows.append({
            "id": f"u{i}", "split": split, "audio": f"audio/u{i}.wav", "duration_s": len(wav16) / 16000,
            "voice": {"engine": "espeak-ng", "voice": voice}, "tasks": ["asr", "sentiment"],
            "task_labels": {"text": text, "sentiment": ["Negative", "Neutral", "Positive"][i % 3]},
        })  # fmt: skip
    manifest = root / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest
