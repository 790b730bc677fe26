"""Config overrides of a built part: the fields a recipe replaces (`encoder_overrides`,
`compressor_overrides`) with the part's weights kept. One mechanism for every kind of part, so the
refusals read the same everywhere."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from torch import nn


def as_tuples(value: Any) -> Any:
    """YAML lists as tuples, nested ones too (frozen configs hold tuples)."""
    return tuple(as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def with_overrides(config: Any, overrides: dict, *, what: str = "encoder_overrides") -> Any:
    """A part's `config` with `overrides` (named `what` in errors) replaced; YAML lists become tuples
    where the field holds a tuple."""
    fields = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown {what} for {type(config).__name__}: {', '.join(unknown)}")
    values = {k: as_tuples(v) if isinstance(getattr(config, k), tuple) else v for k, v in overrides.items()}
    return dataclasses.replace(config, **values)


def rebuilt_with(part: nn.Module, overrides: dict, build: Callable[[Any], nn.Module], *, what: str,
                 source: str) -> nn.Module:  # fmt: skip
    """`part` built again by `build` from its config with `overrides` replaced, its weights loaded back:
    only fields that leave the weights' shapes alone; a ValueError naming `what` and `source` (where
    the part came from) otherwise. No overrides: `part` itself."""
    if not overrides:
        return part
    rebuilt = build(with_overrides(part.config, overrides, what=what))
    try:
        rebuilt.load_state_dict(part.state_dict(), strict=True)
    except RuntimeError as e:
        raise ValueError(f"{what} ({', '.join(sorted(overrides))}) change the weights of {source}: {e}") from e
    return rebuilt.train(part.training)
