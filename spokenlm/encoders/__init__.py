"""Speech encoders behind the `SpeechEncoder` seam, and one place that builds, saves and loads them.

Each kind registers its config type, builder, saver and loader here; `SpeechLM` and the bundle code
call only `build_encoder` / `save_encoder` / `load_encoder`, so a new encoder plugs in with no other
change. A saved encoder directory names its kind in `encoder.json`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from torch import nn

from spokenlm.encoders.base import EncoderOutput, SpeechEncoder
from spokenlm.encoders.dinosr import (
    DinoSREncoder,
    DinoSREncoderConfig,
    build_dinosr_encoder,
    load_dinosr_encoder,
    save_dinosr_encoder,
)
from spokenlm.encoders.sylber import (
    SylberEncoder,
    SylberEncoderConfig,
    build_sylber_encoder,
    load_sylber_encoder,
    save_sylber_encoder,
)
from spokenlm.encoders.wav2vec2 import (
    Wav2Vec2Encoder,
    Wav2Vec2EncoderConfig,
    build_wav2vec2_encoder,
    load_wav2vec2_encoder,
    save_wav2vec2_encoder,
)

__all__ = ["EncoderOutput", "SpeechEncoder", "build_encoder", "load_encoder", "save_encoder", "ENCODER_KINDS"]


@dataclass(frozen=True)
class EncoderKind:
    config_type: type
    module_type: type
    build: Callable[[Any], nn.Module]
    save: Callable[[nn.Module, Path], None]
    load: Callable[[Path], nn.Module]


ENCODER_KINDS: dict[str, EncoderKind] = {
    "wav2vec2": EncoderKind(
        Wav2Vec2EncoderConfig, Wav2Vec2Encoder, build_wav2vec2_encoder, save_wav2vec2_encoder, load_wav2vec2_encoder
    ),
    "dinosr": EncoderKind(
        DinoSREncoderConfig, DinoSREncoder, build_dinosr_encoder, save_dinosr_encoder, load_dinosr_encoder
    ),
    "sylber": EncoderKind(
        SylberEncoderConfig, SylberEncoder, build_sylber_encoder, save_sylber_encoder, load_sylber_encoder
    ),
}


def build_encoder(config: Any) -> nn.Module:
    for kind in ENCODER_KINDS.values():
        if isinstance(config, kind.config_type):
            return kind.build(config)
    raise TypeError(f"no encoder for config type {type(config).__name__}")


def save_encoder(encoder: nn.Module, path: str | Path) -> None:
    for kind in ENCODER_KINDS.values():
        if isinstance(encoder, kind.module_type):
            return kind.save(encoder, Path(path))
    raise TypeError(f"no saver for encoder type {type(encoder).__name__}")


def load_encoder(path: str | Path) -> nn.Module:
    """Load an encoder directory written by `save_encoder` (its kind is in encoder.json)."""
    manifest = Path(path) / "encoder.json"
    if not manifest.is_file():
        raise ValueError(f"{path} is not a saved encoder: encoder.json is missing")
    kind = json.loads(manifest.read_text()).get("kind")
    if kind not in ENCODER_KINDS:
        raise ValueError(f"{manifest}: unknown encoder kind {kind!r}; expected one of {', '.join(ENCODER_KINDS)}")
    return ENCODER_KINDS[kind].load(Path(path))
