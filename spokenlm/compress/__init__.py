"""Compressors: encoder frames -> fewer LLM-bound tokens (Speech-LLaMA, Wu et al., 2023, §2.2).

``build_compressor(config)`` is the one place that turns a config into a module;
``save_compressor`` / ``load_compressor`` write and read a directory holding

    compressor.json      {"kind": "ctc" | "stack", ...the config's fields...}
    model.safetensors    the module's state dict (empty for the parameter-free stack compressor)
    lm.arpa.gz           a CTC compressor's word LM, when its config has beam settings (its lm_file)

Loading never unpickles.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

from torch import nn

from spokenlm.compress.base import CompressedOutput, Compressor
from spokenlm.compress.ctc import CharSpan, CTCCompressor, CTCCompressorConfig
from spokenlm.compress.stack import StackCompressor, StackCompressorConfig
from spokenlm.compress.syllable import SyllableCompressor, SyllableCompressorConfig
from spokenlm.compress.vocab import BLANK, DEFAULT_ALPHABET, CharVocab
from spokenlm.overrides import rebuilt_with

__all__ = [
    "BLANK",
    "DEFAULT_ALPHABET",
    "CTCCompressor",
    "CTCCompressorConfig",
    "CharSpan",
    "CharVocab",
    "CompressedOutput",
    "Compressor",
    "CompressorConfig",
    "StackCompressor",
    "StackCompressorConfig",
    "SyllableCompressor",
    "SyllableCompressorConfig",
    "build_compressor",
    "compressor_config_from_json",
    "compressor_config_to_json",
    "load_compressor",
    "read_compressor_config",
    "save_compressor",
    "with_compressor_config",
]

CompressorConfig = CTCCompressorConfig | StackCompressorConfig | SyllableCompressorConfig

# kind in compressor.json -> (config class, module class)
_KINDS: dict[str, tuple[type, type[nn.Module]]] = {
    "ctc": (CTCCompressorConfig, CTCCompressor),
    "stack": (StackCompressorConfig, StackCompressor),
    "syllable": (SyllableCompressorConfig, SyllableCompressor),
}

CONFIG_FILE = "compressor.json"
WEIGHTS_FILE = "model.safetensors"


def build_compressor(config: CompressorConfig) -> nn.Module:
    """A freshly initialised compressor for ``config`` (validated)."""
    for config_cls, module_cls in _KINDS.values():
        if type(config) is config_cls:
            return module_cls(config)
    raise TypeError(f"no compressor for config type {type(config).__name__}; known: {_config_names()}")


def compressor_config_to_json(config: CompressorConfig) -> dict:
    """{"kind": ..., **fields}: what compressor.json holds, and spokenlm.json's compressor config."""
    kind = next((k for k, (config_cls, _) in _KINDS.items() if type(config) is config_cls), None)
    if kind is None:
        raise TypeError(f"no compressor for config type {type(config).__name__}; known: {_config_names()}")
    return {"kind": kind, **dataclasses.asdict(config)}


def compressor_config_from_json(fields: dict, *, where: str = "compressor config") -> CompressorConfig:
    """The config `compressor_config_to_json` wrote; ValueError naming `where` for an unknown kind or key."""
    fields = dict(fields)
    kind = fields.pop("kind", None)
    if kind not in _KINDS:
        raise ValueError(f"{where}: unknown compressor kind {kind!r}; expected one of {sorted(_KINDS)}")
    config_cls = _KINDS[kind][0]
    known = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"{where}: unknown {kind} compressor config keys {unknown}")
    return config_cls(**fields)


def save_compressor(compressor: nn.Module, directory: str | Path) -> None:
    """Write ``compressor.json`` and ``model.safetensors`` into ``directory`` (created if missing)."""
    from safetensors.torch import save_file

    if not any(type(compressor) is module_cls for _, module_cls in _KINDS.values()):
        raise TypeError(f"cannot save a {type(compressor).__name__}; known: {_config_names()}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = compressor_config_to_json(compressor.config)
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    state = {name: t.detach().cpu().contiguous() for name, t in compressor.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE))
    beam = getattr(compressor.config, "beam", None)
    if beam is not None:
        if compressor.lm_path is None:
            raise ValueError("this CTC compressor has beam settings but no LM attached (attach_lm)")
        target = directory / beam.lm_file
        if compressor.lm_path.resolve() != target.resolve():
            shutil.copyfile(compressor.lm_path, target)


def read_compressor_config(directory: str | Path) -> CompressorConfig:
    """The config of the compressor saved in ``directory`` (its ``compressor.json``), weights unread."""
    config_path = Path(directory) / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"no {CONFIG_FILE} in {directory}")
    return compressor_config_from_json(json.loads(config_path.read_text()), where=str(config_path))


def load_compressor(directory: str | Path, *, device: str = "cpu") -> nn.Module:
    """The compressor saved in ``directory`` by ``save_compressor``, weights on ``device``."""
    from safetensors.torch import load_file

    directory = Path(directory)
    config = read_compressor_config(directory)
    compressor = build_compressor(config)
    compressor.load_state_dict(load_file(str(directory / WEIGHTS_FILE), device=device), strict=True)
    beam = getattr(config, "beam", None)
    if beam is not None:
        compressor.attach_lm(directory / beam.lm_file)
    return compressor.to(device)


def with_compressor_config(compressor: nn.Module, overrides: dict, *, source: str = "the compressor") -> nn.Module:
    """`compressor` rebuilt with some config fields replaced and its weights (and word LM) kept: fields
    that leave the weights' shapes alone, e.g. a CTC compressor's {"mode": "blank_removal"} (the
    same head, one token per emitted character instead of one per run); ValueError naming `source`
    otherwise."""
    rebuilt = rebuilt_with(compressor, overrides, build_compressor, what="compressor_overrides", source=source)
    if rebuilt is not compressor and getattr(rebuilt.config, "beam", None) is not None:
        rebuilt.attach_lm(compressor.lm_path)  # the word LM is a file beside the weights, not in them
    return rebuilt


def _config_names() -> list[str]:
    return [config_cls.__name__ for config_cls, _ in _KINDS.values()]
