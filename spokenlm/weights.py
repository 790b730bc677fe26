"""Weight files in a checkpoint directory: safetensors only, never a pickle.

One check for every loader of Hugging Face-style directories (LLMs in spokenlm/lm.py, Whisper in
spokenlm/encoders/whisper.py), so the refusal reads the same everywhere.
"""

from __future__ import annotations

from pathlib import Path


def no_safetensors_error(path: Path) -> Exception:
    """The error for a directory without model*.safetensors: a ValueError naming its pickled weights
    when it has only those (we never unpickle), else a FileNotFoundError."""
    pickled = sorted(p.name for p in path.glob("pytorch_model*.bin"))
    if pickled:
        return ValueError(
            f"{path} holds only pickled weights ({', '.join(pickled)}); spokenlm never unpickles: "
            "convert them to model.safetensors (save_pretrained(..., safe_serialization=True))"
        )
    return FileNotFoundError(f"{path} has no model.safetensors")
