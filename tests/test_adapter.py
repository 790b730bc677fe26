"""spokenlm.adapter: shapes, layer structure, per-token independence, config validation."""

import re

import pytest
import torch
from torch import nn

from spokenlm.adapter import AdapterConfig, build_adapter


@pytest.mark.parametrize("kind", ["mlp", "linear"])
def test_maps_encoder_dim_to_llm_dim(kind):
    adapter = build_adapter(AdapterConfig(input_dim=12, output_dim=32, hidden_dim=16, kind=kind))
    out = adapter(torch.randn(3, 7, 12))
    assert out.shape == (3, 7, 32)
    assert adapter.config.kind == kind


def test_mlp_is_linear_gelu_linear():
    adapter = build_adapter(AdapterConfig(input_dim=12, output_dim=32, hidden_dim=16))
    layers = list(adapter.proj)
    assert [type(m) for m in layers] == [nn.Linear, nn.GELU, nn.Linear]
    assert (layers[0].in_features, layers[0].out_features, layers[2].out_features) == (12, 16, 32)


def test_each_token_is_projected_alone():
    # padding rows after an item's tokens must not change its outputs
    torch.manual_seed(0)
    adapter = build_adapter(AdapterConfig(input_dim=12, output_dim=32, hidden_dim=16))
    x = torch.randn(1, 5, 12)
    padded = torch.cat([x, torch.randn(1, 3, 12)], dim=1)
    torch.testing.assert_close(adapter(padded)[:, :5], adapter(x))


def test_wrong_input_dim_is_named():
    adapter = build_adapter(AdapterConfig(input_dim=12, output_dim=32, hidden_dim=16))
    with pytest.raises(ValueError, match=re.escape("adapter expects input dim 12, got shape (2, 4, 10)")):
        adapter(torch.randn(2, 4, 10))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "conv"}, "kind must be one of ('linear', 'mlp'), got 'conv'"),
        ({"input_dim": 0}, "input_dim must be >= 1, got 0"),
        ({"hidden_dim": -4}, "hidden_dim must be >= 1, got -4"),
    ],
)
def test_validate_rejects_bad_config(kwargs, message):
    config = AdapterConfig(**{"input_dim": 12, "output_dim": 32, **kwargs})
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        build_adapter(config)
