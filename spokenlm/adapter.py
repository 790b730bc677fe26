"""The adapter: projects compressed speech embeddings into the LLM's embedding space.

(B, N, D_enc) -> (B, N, D_llm), applied per token, so padded positions stay where they were and
``lengths`` pass through unchanged. The MLP (Linear-GELU-Linear) is the projector of Speech-LLaMA
(Wu et al., 2023, §2.2) and SLAM-LLM (Ma et al., 2024, §3.1); "linear" is the single-matrix baseline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import Tensor, nn

ADAPTER_KINDS = ("linear", "mlp")


@dataclass(frozen=True, kw_only=True)
class AdapterConfig:
    input_dim: int | None = None
    """D_enc: width of the compressor's embeddings (None in a SpeechLMConfig: build_speechlm sets it)."""

    output_dim: int | None = None
    """D_llm: the LLM's ``model_dim``, hidden size of its token embeddings (None: as input_dim)."""

    hidden_dim: int = 2048
    """Width of the MLP's inner layer; unused by "linear"."""

    kind: Literal["linear", "mlp"] = "mlp"
    """"mlp": Linear-GELU-Linear; "linear": one Linear."""

    def validate(self) -> None:
        if self.kind not in ADAPTER_KINDS:
            raise ValueError(f"kind must be one of {ADAPTER_KINDS}, got {self.kind!r}")
        for name in ("input_dim", "output_dim", "hidden_dim"):
            value = getattr(self, name)
            if value is None:
                raise ValueError(f"{name} is unset; build_speechlm sets it from the compressor and the LLM")
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")


class Adapter(nn.Module):
    """A per-token projection; ``config`` is kept so a bundle can save it next to the weights."""

    def __init__(self, config: AdapterConfig, proj: nn.Module) -> None:
        super().__init__()
        self.config = config
        self.input_dim = config.input_dim
        self.output_dim = config.output_dim
        self.proj = proj

    def forward(self, x: Tensor) -> Tensor:
        # (B, N, D_enc) -> (B, N, D_llm)
        if x.shape[-1] != self.input_dim:
            raise ValueError(f"adapter expects input dim {self.input_dim}, got shape {tuple(x.shape)}")
        return self.proj(x)


def build_adapter(config: AdapterConfig) -> Adapter:
    config.validate()
    if config.kind == "linear":
        proj: nn.Module = nn.Linear(config.input_dim, config.output_dim)
    else:
        proj = nn.Sequential(
            nn.Linear(config.input_dim, config.hidden_dim),
            nn.GELU(),
            nn.Linear(config.hidden_dim, config.output_dim),
        )
    return Adapter(config, proj)
