"""Speech encoders (wav2vec 2.0, DinoSR, Sylber, Whisper) behind the `SpeechEncoder` seam, and one
place that builds, saves and loads them.

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
from spokenlm.encoders.whisper import (
    WhisperEncoder,
    WhisperEncoderConfig,
    build_whisper_encoder,
    load_whisper_encoder,
    save_whisper_encoder,
)
from spokenlm.encoders.wav2vec2 import (
    Wav2Vec2Encoder,
    Wav2Vec2EncoderConfig,
    build_wav2vec2_encoder,
    load_wav2vec2_encoder,
    save_wav2vec2_encoder,
)
from spokenlm.overrides import as_tuples, rebuilt_with, with_overrides

__all__ = [
    "EncoderOutput", "SpeechEncoder", "build_encoder", "load_encoder", "save_encoder", "with_config", "with_overrides",
    "ENCODER_KINDS", "encoder_kind", "encoder_config_to_json", "encoder_config_from_json",
]  # fmt: skip


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
    "whisper": EncoderKind(
        WhisperEncoderConfig, WhisperEncoder, build_whisper_encoder, save_whisper_encoder, load_whisper_encoder
    ),
}


def encoder_kind(encoder: nn.Module) -> str | None:
    """The ENCODER_KINDS name of an encoder module, or None for a module of no registered kind."""
    return next((name for name, kind in ENCODER_KINDS.items() if isinstance(encoder, kind.module_type)), None)


def encoder_config_to_json(config: Any) -> dict:
    """{"kind": ..., **fields} of an encoder config, for spokenlm.json."""
    import dataclasses

    kind = next((name for name, k in ENCODER_KINDS.items() if type(config) is k.config_type), None)
    if kind is None:
        raise TypeError(f"no encoder kind for config type {type(config).__name__}")
    return {"kind": kind, **dataclasses.asdict(config)}


def encoder_config_from_json(fields: dict) -> Any:
    """The encoder config `encoder_config_to_json` wrote (JSON lists back to tuples)."""
    import dataclasses

    fields = dict(fields)
    kind = fields.pop("kind", None)
    if kind not in ENCODER_KINDS:
        raise ValueError(f"unknown encoder kind {kind!r}; expected one of {', '.join(ENCODER_KINDS)}")
    config_type = ENCODER_KINDS[kind].config_type
    tuples = {f.name for f in dataclasses.fields(config_type) if "tuple" in str(f.type)}
    return config_type(**{k: as_tuples(v) if k in tuples else v for k, v in fields.items()})


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
    """Load an encoder directory written by `save_encoder` (its kind is in encoder.json), or a
    checkpoint directory in a form users hold: a CTranslate2 Whisper dir (model.bin), or a Hugging Face
    Whisper / Wav2Vec2 dir (config.json names the model_type)."""
    manifest = Path(path) / "encoder.json"
    if not manifest.is_file():
        kind = _foreign_kind(Path(path))
        if kind is None:
            raise ValueError(
                f"{path} is not a saved encoder (encoder.json is missing), nor a CTranslate2 or "
                "Hugging Face Whisper / Wav2Vec2 directory"
            )
        return ENCODER_KINDS[kind].load(Path(path))
    kind = json.loads(manifest.read_text()).get("kind")
    if kind not in ENCODER_KINDS:
        raise ValueError(f"{manifest}: unknown encoder kind {kind!r}; expected one of {', '.join(ENCODER_KINDS)}")
    return ENCODER_KINDS[kind].load(Path(path))


def _foreign_kind(path: Path) -> str | None:
    """The encoder kind of a checkpoint directory saved by another tool, or None."""
    if (path / "model.bin").is_file():
        return "whisper"  # CTranslate2 (faster-whisper's format); its reader checks the spec
    config = path / "config.json"
    if config.is_file():
        try:
            model_type = json.loads(config.read_text()).get("model_type")
        except (json.JSONDecodeError, AttributeError):
            return None
        return {"whisper": "whisper", "wav2vec2": "wav2vec2"}.get(model_type)
    return None


def with_config(encoder: nn.Module, overrides: dict, *, source: str = "the encoder") -> nn.Module:
    """`encoder` rebuilt with some config fields replaced and its weights kept: only fields that do
    not change the weights' shapes (dropout, layer_drop, Whisper's bf16, ...); ValueError naming
    `source` (where the encoder came from) otherwise."""
    return rebuilt_with(encoder, overrides, build_encoder, what="encoder_overrides", source=source)
