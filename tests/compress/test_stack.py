"""Stack compressor: k frames -> one token by concatenation, checked by hand."""

from __future__ import annotations

import json

import pytest
import torch

from spokenlm.compress import (
    StackCompressor,
    StackCompressorConfig,
    build_compressor,
    load_compressor,
    save_compressor,
)
from spokenlm.encoders.base import EncoderOutput


def ramp(batch: int, frames: int, dim: int) -> torch.Tensor:
    """(B, T, D) with value 100 b + 10 t + d + 1, so every frame is recognisable and non-zero."""
    b, t, d = torch.meshgrid(torch.arange(batch), torch.arange(frames), torch.arange(dim), indexing="ij")
    return (100 * b + 10 * t + d + 1).float()


def test_stack_by_hand_with_partial_group() -> None:
    x = ramp(2, 7, 2)
    enc = EncoderOutput(features=x, lengths=torch.tensor([7, 4]), frame_rate_hz=50.0)
    compressor = build_compressor(StackCompressorConfig(input_dim=2, k=3))
    out = compressor(enc)
    assert compressor.output_dim == 6 and out.embeddings.shape == (2, 3, 6)
    assert out.lengths.tolist() == [3, 2]  # ceil(7/3), ceil(4/3)
    assert out.spans == [[(0, 3), (3, 6), (6, 7)], [(0, 3), (3, 4)]]
    torch.testing.assert_close(out.embeddings[0, 0], x[0, 0:3].reshape(6))  # frames 0,1,2 concatenated
    torch.testing.assert_close(out.embeddings[0, 2], torch.cat([x[0, 6], torch.zeros(4)]))  # partial: zero-padded
    # item 1: frames 4..6 are padding and must not leak into token 1
    torch.testing.assert_close(out.embeddings[1, 1], torch.cat([x[1, 3], torch.zeros(4)]))
    assert out.embeddings[1, 2].abs().sum() == 0
    # 3 tokens / 0.14 s and 2 tokens / 0.08 s; 50/3 Hz only when k divides T
    torch.testing.assert_close(out.tokens_per_second, torch.tensor([3 / 0.14, 2 / 0.08]))
    assert out.ctc_log_probs is None
    assert not list(compressor.parameters())


def test_exact_multiple_gives_frame_rate_over_k() -> None:
    enc = EncoderOutput(features=ramp(1, 8, 3), lengths=torch.tensor([8]), frame_rate_hz=50.0)
    out = StackCompressor(StackCompressorConfig(input_dim=3, k=4))(enc)
    assert out.lengths.tolist() == [2] and out.spans == [[(0, 4), (4, 8)]]
    torch.testing.assert_close(out.tokens_per_second, torch.tensor([12.5]))


def test_batched_with_padding_equals_per_item() -> None:
    torch.manual_seed(0)
    compressor = StackCompressor(StackCompressorConfig(input_dim=4, k=2))
    x = torch.randn(3, 9, 4)
    lengths = [9, 5, 2]
    batched = compressor(EncoderOutput(features=x, lengths=torch.tensor(lengths), frame_rate_hz=50.0))
    for i, n in enumerate(lengths):
        single = compressor(EncoderOutput(features=x[i : i + 1, :n], lengths=torch.tensor([n]), frame_rate_hz=50.0))
        m = int(single.lengths[0])
        torch.testing.assert_close(batched.embeddings[i, :m], single.embeddings[0])
        assert batched.spans[i] == single.spans[0]


def test_config_validation_messages() -> None:
    with pytest.raises(ValueError, match="^StackCompressorConfig.k must be a positive int, got 0$"):
        StackCompressorConfig(input_dim=4, k=0).validate()
    with pytest.raises(ValueError, match="^StackCompressorConfig.input_dim must be a positive int, got -1$"):
        build_compressor(StackCompressorConfig(input_dim=-1, k=2))
    with pytest.raises(TypeError, match="^no compressor for config type dict"):
        build_compressor({"k": 2})  # type: ignore[arg-type]


def test_save_load_round_trip(tmp_path) -> None:
    compressor = build_compressor(StackCompressorConfig(input_dim=3, k=5))
    save_compressor(compressor, tmp_path)
    assert json.loads((tmp_path / "compressor.json").read_text()) == {"kind": "stack", "input_dim": 3, "k": 5}
    assert (tmp_path / "model.safetensors").is_file()
    loaded = load_compressor(tmp_path)
    assert isinstance(loaded, StackCompressor) and loaded.config == compressor.config
    enc = EncoderOutput(features=ramp(1, 7, 3), lengths=torch.tensor([7]), frame_rate_hz=50.0)
    torch.testing.assert_close(loaded(enc).embeddings, compressor(enc).embeddings)
