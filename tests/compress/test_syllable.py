"""Syllable compressor: Sylber segments mean-pooled into tokens, checked by hand."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from spokenlm.compress.syllable import SyllableCompressor, SyllableCompressorConfig
from spokenlm.encoders.base import EncoderOutput


def frames(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


# item 0: syllable [0, 2) along x, a silent frame, syllable [3, 6) along y
ITEM0 = frames([3, 0, 0], [5, 0, 0], [0, 0.1, 0], [0, 4, 0], [0, 6, 0], [0, 5, 0])
# item 1: one syllable along z over 4 frames
ITEM1 = frames([0, 0, 3], [0, 0, 3], [0, 0, 4], [0, 0, 6])


def batch(*items: torch.Tensor, rate: float = 50.0) -> EncoderOutput:
    n_max = max(len(x) for x in items)
    features = torch.full((len(items), n_max, items[0].shape[1]), 100.0)  # loud padding
    for i, x in enumerate(items):
        features[i, : len(x)] = x
    return EncoderOutput(features=features, lengths=torch.tensor([len(x) for x in items]), frame_rate_hz=rate)


def test_syllable_means_spans_and_rates_by_hand() -> None:
    compressor = SyllableCompressor(SyllableCompressorConfig(input_dim=3))  # norm 2.6, merge 0.8
    out = compressor(batch(ITEM0, ITEM1))
    assert compressor.output_dim == 3 and not list(compressor.parameters())
    assert out.lengths.tolist() == [2, 1]
    assert out.spans == [[(0, 2), (3, 6)], [(0, 4)]]
    expected = torch.tensor([[[4.0, 0, 0], [0, 5, 0]], [[0, 0, 4], [0, 0, 0]]])  # means; zero padding
    torch.testing.assert_close(out.embeddings, expected)
    # 2 tokens / 0.12 s and 1 token / 0.08 s
    torch.testing.assert_close(out.tokens_per_second, torch.tensor([2 / 0.12, 1 / 0.08]))
    assert out.frame_rate_hz == 50.0 and out.span_seconds(0) == [(0.0, 0.04), (0.06, 0.12)]
    assert out.ctc_log_probs is None


def test_thresholds_change_the_syllables() -> None:
    # frames [5,0,0] and [4,3,0] have cosine 0.8: one syllable at merge 0.8, two at 0.9
    x = frames([5, 0, 0], [5, 0, 0], [4, 3, 0], [4, 3, 0])
    merged = SyllableCompressor(SyllableCompressorConfig(input_dim=3, merge_threshold=0.7))(batch(x))
    split = SyllableCompressor(SyllableCompressorConfig(input_dim=3, merge_threshold=0.9))(batch(x))
    assert merged.spans == [[(0, 4)]] and split.spans == [[(0, 2), (2, 4)]]
    quiet = SyllableCompressor(SyllableCompressorConfig(input_dim=3, norm_threshold=5.5))(batch(ITEM1))
    assert quiet.spans == [[(3, 4)]]  # only the norm-6 frame counts as speech


def test_no_speech_gives_one_token_of_all_valid_frames() -> None:
    silent = frames([0.1, 0, 0], [0, 0.3, 0], [0, 0, 0.5])  # every norm < 2.6
    out = SyllableCompressor(SyllableCompressorConfig(input_dim=3))(batch(ITEM1, silent))
    assert out.lengths.tolist() == [1, 1]
    assert out.spans[1] == [(0, 3)]
    torch.testing.assert_close(out.embeddings[1, 0], torch.tensor([0.1, 0.3, 0.5]) / 3)  # no padding in it
    torch.testing.assert_close(out.tokens_per_second[1], torch.tensor(1 / 0.06))


def test_batched_with_padding_equals_per_item_and_gradients_flow() -> None:
    compressor = SyllableCompressor(SyllableCompressorConfig(input_dim=3))
    encoded = batch(ITEM0, ITEM1)
    features = encoded.features.clone().requires_grad_(True)
    out = compressor(dataclasses.replace(encoded, features=features))
    for i, x in enumerate((ITEM0, ITEM1)):
        single = compressor(batch(x))
        n = int(single.lengths[0])
        assert single.spans[0] == out.spans[i]
        torch.testing.assert_close(single.embeddings[0, :n], out.embeddings[i, :n])
    out.embeddings.sum().backward()
    # d(sum of means)/d(frame) = 1 / (syllable length) inside syllables, 0 on silence and padding
    expected = torch.tensor([[1 / 2, 1 / 2, 0, 1 / 3, 1 / 3, 1 / 3], [1 / 4] * 4 + [0, 0]])
    torch.testing.assert_close(features.grad[..., 0], expected)


def test_config_is_json_and_validated() -> None:
    config = SyllableCompressorConfig(input_dim=8, norm_threshold=1.5, merge_threshold=0.7)
    fields = json.loads(json.dumps(dataclasses.asdict(config)))
    assert SyllableCompressorConfig(**fields) == config
    with pytest.raises(ValueError, match="SyllableCompressorConfig.input_dim must be a positive int, got 0"):
        SyllableCompressor(SyllableCompressorConfig(input_dim=0))
    with pytest.raises(ValueError, match=r"merge_threshold must be a cosine similarity in \[-1, 1\], got 2"):
        SyllableCompressor(SyllableCompressorConfig(input_dim=3, merge_threshold=2))
    compressor = SyllableCompressor(SyllableCompressorConfig(input_dim=3))
    with pytest.raises(ValueError, match=r"item 0 has length 0; lengths must be in \[1, 4\]"):
        compressor(EncoderOutput(features=torch.ones(1, 4, 3), lengths=torch.tensor([0]), frame_rate_hz=50.0))
    with pytest.raises(ValueError, match="features have dim 3, the compressor expects 4"):
        SyllableCompressor(SyllableCompressorConfig(input_dim=4))(batch(ITEM1))
