"""Tests for spokenlm/encoders/whisper.py on tiny random models, plus the real tiny.en when fetched.

Parity: on a 30-s input our encoder (unpadded front end, sliced positions) equals transformers' own
WhisperEncoder fed WhisperFeatureExtractor features; a tiny HF Whisper converted by ctranslate2's own
converter reads back to the HF tensors exactly (fp32, fp16) or within int8's quantisation step.
"""

from __future__ import annotations

import json
import struct
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from spokenlm.encoders import ENCODER_KINDS, load_encoder, save_encoder
from spokenlm.encoders.base import EncoderOutput
from spokenlm.encoders.whisper import (
    WhisperEncoder,
    build_whisper_encoder,
    ctranslate2_to_hf_whisper,
    load_whisper_encoder,
    load_whisper_model,
    log_mel_spectrogram,
    mel_filters,
    read_ctranslate2_model,
    save_whisper_encoder,
    whisper_test,
    whisper_tiny,
)

LENGTHS = [27_200, 16_000, 9_123]  # samples; the longest fills the batch, the others pad
SPECIAL_TOKENS = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|translate|>", "<|notimestamps|>"]


def _audio(n: int, seed: int = 0) -> torch.Tensor:
    """A voiced-ish test signal: a few harmonics with vibrato plus a little noise, (n,)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n) / 16_000
    f0 = 140 + 20 * torch.sin(2 * torch.pi * 3 * t)
    phase = 2 * torch.pi * torch.cumsum(f0, 0) / 16_000
    wav = sum(torch.sin(k * phase) / k for k in range(1, 6)) * 0.1
    return wav + 0.01 * torch.randn(n, generator=g)


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    wav = torch.zeros(len(LENGTHS), max(LENGTHS))
    for i, n in enumerate(LENGTHS):
        wav[i, :n] = _audio(n, seed=i)
    return wav, torch.tensor(LENGTHS)


def _tiny(**changes) -> WhisperEncoder:
    torch.manual_seed(0)
    encoder = build_whisper_encoder(replace(whisper_test(), **changes))
    for p in encoder.model.parameters():  # larger than HF's init, so layers visibly change the signal
        p.data.normal_(0, 0.2)
    return encoder.eval()


@pytest.fixture(scope="module")
def hf_whisper_dir(tmp_path_factory) -> Path:
    """A tiny random WhisperForConditionalGeneration + tokenizer, as save_pretrained writes them."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, WhisperConfig, WhisperForConditionalGeneration

    path = tmp_path_factory.mktemp("hf-whisper")
    vocab = {c: i for i, c in enumerate("abcdefghijklmnopqrstuvwxyz ")}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="a"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    PreTrainedTokenizerFast(
        tokenizer_object=tok, additional_special_tokens=SPECIAL_TOKENS, eos_token="<|endoftext|>", unk_token="a"
    ).save_pretrained(path)
    config = WhisperConfig(
        vocab_size=64, d_model=16, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_target_positions=64,
        decoder_start_token_id=28, eos_token_id=27, pad_token_id=27, bos_token_id=27,
    )  # fmt: skip
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config)
    for p in model.parameters():
        p.data.normal_(0, 0.2)
    model.save_pretrained(path, safe_serialization=True)
    return path


def _convert(hf_dir: Path, out: Path, quantization: str) -> Path:
    ctranslate2 = pytest.importorskip("ctranslate2")
    ctranslate2.converters.TransformersConverter(str(hf_dir)).convert(str(out), quantization=quantization, force=True)
    return out


def _hf_state(hf_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(hf_dir / "model.safetensors"))


# ---------------------------------------------------------------------------------------------
# Config, shapes, features


def test_presets_and_registration() -> None:
    tiny = whisper_tiny()
    tiny.validate()
    assert (tiny.model_dim, tiny.num_layers, tiny.frame_rate_hz, tiny.max_frames) == (384, 4, 50.0, 1500)
    assert ENCODER_KINDS["whisper"].config_type is type(tiny)
    encoder = _tiny()
    assert encoder.output_dim == 16 and encoder.frame_rate_hz == 50.0
    assert sum(p.numel() for p in encoder.parameters()) < 100_000


def test_log_mel_equals_transformers_feature_extractor() -> None:
    from transformers import WhisperFeatureExtractor

    wav = _audio(16_000 * 3 + 77)
    ours = log_mel_spectrogram(wav, mel_filters(80))
    ref = WhisperFeatureExtractor()(wav.numpy(), sampling_rate=16_000, padding="do_not_pad", return_tensors="pt")
    ref = ref.input_features[0]
    assert ours.shape == ref.shape == (80, wav.shape[0] // 160)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)


def test_output_lengths_and_shapes(batch) -> None:
    wav, lengths = batch
    out = _tiny()(wav, lengths)
    assert isinstance(out, EncoderOutput)
    expected = [-(-(n // 160) // 2) for n in LENGTHS]  # ceil(mel frames / 2)
    assert out.lengths.tolist() == expected == [85, 50, 29]
    assert out.lengths.dtype == torch.int64
    assert out.features.shape == (3, 85, 16)
    assert out.hidden_states.shape == (3, 3, 85, 16)  # (L + 1, B, T, D)
    for i, n in enumerate(expected):
        assert torch.all(out.features[i, n:] == 0) and torch.all(out.hidden_states[:, i, n:] == 0)


def test_batched_equals_single(batch) -> None:
    wav, lengths = batch
    encoder = _tiny()
    with torch.no_grad():
        batched = encoder(wav, lengths)
        for i, n in enumerate(LENGTHS):
            single = encoder(wav[i : i + 1, :n], lengths[i : i + 1])
            t = int(single.lengths[0])
            assert t == int(batched.lengths[i])
            torch.testing.assert_close(batched.hidden_states[:, i, :t], single.hidden_states[:, 0], atol=1e-5, rtol=0)


def test_padding_content_is_ignored(batch) -> None:
    wav, lengths = batch
    noisy = wav.clone()
    noisy[1, LENGTHS[1] :] = 0.7  # garbage past the end of item 1
    encoder = _tiny()
    with torch.no_grad():
        torch.testing.assert_close(encoder(noisy, lengths).features, encoder(wav, lengths).features)


def test_30_seconds_equal_transformers_whisper_encoder() -> None:
    from transformers import WhisperFeatureExtractor
    from transformers.models.whisper.modeling_whisper import WhisperEncoder as HFWhisperEncoder

    encoder = _tiny()
    reference = HFWhisperEncoder(encoder.model.config).eval()
    reference.load_state_dict(encoder.model.state_dict())
    wav = _audio(480_000)
    features = WhisperFeatureExtractor()(wav.numpy(), sampling_rate=16_000, return_tensors="pt").input_features
    with torch.no_grad():
        ref = reference(features, output_hidden_states=True)
        ours = encoder(wav[None], torch.tensor([480_000]))
    assert ours.features.shape == ref.last_hidden_state.shape == (1, 1500, 16)
    torch.testing.assert_close(ours.features, ref.last_hidden_state, atol=1e-4, rtol=0)
    for i, state in enumerate(ref.hidden_states[:-1]):  # the last of HF's states is before its layer norm
        torch.testing.assert_close(ours.hidden_states[i], state, atol=1e-4, rtol=0)


def test_layer_choices(batch) -> None:
    wav, lengths = batch
    last = _tiny()(wav, lengths)
    first = _tiny(layer=1)(wav, lengths)
    torch.testing.assert_close(first.features, last.hidden_states[1])
    weighted = _tiny(layer="weighted")
    assert weighted.layer_logits.shape == (3,)
    out = weighted(wav, lengths)
    torch.testing.assert_close(out.features, last.hidden_states.mean(0), atol=1e-6, rtol=0)
    out.features.sum().backward()
    assert weighted.layer_logits.grad is not None


# ---------------------------------------------------------------------------------------------
# Save / load


def test_save_load_is_bit_exact(tmp_path, batch) -> None:
    wav, lengths = batch
    for layer in ("last", "weighted"):
        encoder = _tiny(layer=layer)
        if encoder.layer_logits is not None:
            encoder.layer_logits.data = torch.tensor([0.3, -1.0, 2.0])
        save_encoder(encoder, tmp_path / layer)
        assert json.loads((tmp_path / layer / "encoder.json").read_text())["kind"] == "whisper"
        loaded = load_encoder(tmp_path / layer)
        assert isinstance(loaded, WhisperEncoder) and not loaded.training
        for (k, a), (_, b) in zip(encoder.state_dict().items(), loaded.state_dict().items()):
            assert torch.equal(a, b), k
        assert torch.equal(encoder(wav, lengths).features, loaded(wav, lengths).features)


def test_saved_fp16_encoder_stays_fp16(tmp_path) -> None:
    encoder = _tiny().half()
    save_whisper_encoder(encoder, tmp_path / "half")
    loaded = load_whisper_encoder(tmp_path / "half")
    assert loaded.model.conv1.weight.dtype == torch.float16
    assert torch.equal(loaded.model.conv1.weight, encoder.model.conv1.weight)


def test_hf_dir_loads_encoder_weights_exactly(hf_whisper_dir, batch) -> None:
    encoder = load_whisper_encoder(hf_whisper_dir, layer=2)
    assert encoder.config.layer == 2 and encoder.output_dim == 16
    state = _hf_state(hf_whisper_dir)
    for name, value in encoder.model.state_dict().items():
        assert torch.equal(value, state[f"model.encoder.{name}"]), name
    wav, lengths = batch
    assert encoder(wav, lengths).features.shape == (3, 85, 16)
    generic = load_encoder(hf_whisper_dir)  # a foreign dir is recognised by its config.json
    assert isinstance(generic, WhisperEncoder) and torch.equal(generic(wav, lengths).features, _last(encoder, wav, lengths))


def _last(encoder: WhisperEncoder, wav, lengths) -> torch.Tensor:
    return encoder(wav, lengths).hidden_states[-1]


@pytest.mark.parametrize("quantization", ["float32", "float16"])
def test_ctranslate2_conversion_reads_back_identical(hf_whisper_dir, tmp_path, quantization) -> None:
    ct2_dir = _convert(hf_whisper_dir, tmp_path / quantization, quantization)
    model = read_ctranslate2_model(ct2_dir)
    assert model.spec == "WhisperSpec"
    converted = ctranslate2_to_hf_whisper(model)
    reference = _hf_state(hf_whisper_dir)
    assert set(converted) == set(reference) - {"proj_out.weight"}  # proj_out is tied to the embeddings
    for name, value in converted.items():
        want = reference[name].half() if quantization == "float16" else reference[name]
        assert value.dtype == want.dtype and torch.equal(value, want), name
    encoder = load_encoder(ct2_dir)  # recognised by its model.bin
    assert isinstance(encoder, WhisperEncoder)
    for name, value in encoder.model.state_dict().items():
        assert torch.equal(value, reference[f"model.encoder.{name}"].to(value.dtype) if quantization == "float32"
                           else reference[f"model.encoder.{name}"].half().float()), name  # fmt: skip


def test_ctranslate2_int8_is_dequantized(hf_whisper_dir, tmp_path) -> None:
    ct2_dir = _convert(hf_whisper_dir, tmp_path / "int8", "int8")
    converted = ctranslate2_to_hf_whisper(read_ctranslate2_model(ct2_dir))
    reference = _hf_state(hf_whisper_dir)
    name = "model.encoder.layers.0.fc1.weight"
    assert converted[name].dtype == torch.float32
    step = reference[name].abs().amax(dim=1, keepdim=True) / 127  # one quantisation step per row
    assert torch.all((converted[name] - reference[name]).abs() <= step / 2 + 1e-6)
    assert not torch.equal(converted[name], reference[name])


def test_full_model_from_ctranslate2_equals_hf(hf_whisper_dir, tmp_path) -> None:
    from transformers import WhisperForConditionalGeneration

    ct2_dir = _convert(hf_whisper_dir, tmp_path / "ct2", "float32")
    (ct2_dir / "tokenizer.json").write_bytes((hf_whisper_dir / "tokenizer.json").read_bytes())
    ours, tokenizer = load_whisper_model(ct2_dir)
    reference = WhisperForConditionalGeneration.from_pretrained(hf_whisper_dir).eval()
    features = torch.randn(1, 80, 3000)
    decoder_ids = torch.tensor([[28, 3, 5, 7]])
    with torch.no_grad():
        a = ours(input_features=features, decoder_input_ids=decoder_ids).logits
        b = reference(input_features=features, decoder_input_ids=decoder_ids).logits
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert ours.generation_config.decoder_start_token_id == tokenizer.convert_tokens_to_ids("<|startoftranscript|>")


# ---------------------------------------------------------------------------------------------
# Errors


def test_too_long_audio_is_refused() -> None:
    encoder = _tiny()
    with pytest.raises(ValueError, match=r"audio of 31\.00 s is longer than Whisper's 30 s window \(1500 positions\)"):
        encoder(torch.zeros(1, 31 * 16_000), torch.tensor([31 * 16_000]))


def test_bad_inputs_are_named() -> None:
    encoder = _tiny()
    with pytest.raises(ValueError, match=r"wav must be \(B, S\) float audio, got shape \(16000,\)"):
        encoder(torch.zeros(16_000), torch.tensor([16_000]))
    with pytest.raises(ValueError, match=r"lengths\[0\]=100 is shorter than one frame \(400 samples\)"):
        encoder(torch.zeros(1, 1000), torch.tensor([100]))
    with pytest.raises(ValueError, match=r"layer must be 'last', 'weighted' or an int in \[0, 2\], got 7"):
        _tiny(layer=7)
    with pytest.raises(ValueError, match=r"d_model 16 is not divisible by 3 attention heads"):
        build_whisper_encoder(replace(whisper_test(), arch=whisper_test().arch | {"encoder_attention_heads": 3}))


def _write_ct2(path: Path, version: int, variables: list[tuple[str, list[int], int, bytes]]) -> None:
    def string(s: str) -> bytes:
        raw = s.encode() + b"\0"
        return struct.pack("<H", len(raw)) + raw

    out = struct.pack("<I", version) + string("WhisperSpec") + struct.pack("<II", 3, len(variables))
    for name, shape, dtype, data in variables:
        out += string(name) + bytes([len(shape)]) + b"".join(struct.pack("<I", d) for d in shape)
        out += bytes([dtype]) + struct.pack("<I", len(data)) + data
    path.mkdir(parents=True, exist_ok=True)
    (path / "model.bin").write_bytes(out + struct.pack("<I", 0))


def test_ctranslate2_reader_errors(tmp_path) -> None:
    ok = ("x", [2], 0, np.ones(2, dtype=np.float32).tobytes())
    _write_ct2(tmp_path / "v9", 9, [ok])
    with pytest.raises(ValueError, match=r"CTranslate2 binary version 9 is not supported \(this reader knows 4 to 6\)"):
        read_ctranslate2_model(tmp_path / "v9")
    _write_ct2(tmp_path / "dtype", 6, [("x", [2], 7, b"\0" * 8)])
    with pytest.raises(ValueError, match=r"variable x has unknown CTranslate2 dtype id 7"):
        read_ctranslate2_model(tmp_path / "dtype")
    _write_ct2(tmp_path / "cut", 6, [ok])
    (tmp_path / "cut" / "model.bin").write_bytes((tmp_path / "cut" / "model.bin").read_bytes()[:30])
    with pytest.raises(ValueError, match=r"model\.bin is truncated: wanted \d+ bytes at offset \d+ of 30"):
        read_ctranslate2_model(tmp_path / "cut")
    _write_ct2(tmp_path / "int16", 6, [("w", [1, 2], 2, b"\0" * 4), ("w_scale", [1], 0, b"\0" * 4)])
    with pytest.raises(ValueError, match=r"w is int16-quantized, which this reader does not de-quantize"):
        read_ctranslate2_model(tmp_path / "int16")
    with pytest.raises(FileNotFoundError, match=r"no CTranslate2 model\.bin at"):
        read_ctranslate2_model(tmp_path / "missing")
    with pytest.raises(ValueError, match=r"CTranslate2 Whisper model lacks variable encoder/conv1/weight"):
        _write_ct2(tmp_path / "not-whisper", 6, [ok])
        load_whisper_encoder(tmp_path / "not-whisper")


def test_hf_dir_errors(tmp_path, hf_whisper_dir) -> None:
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((hf_whisper_dir / "config.json").read_text())
    (pickled / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(ValueError, match=r"holds only pickled weights \(pytorch_model\.bin\); spokenlm never unpickles"):
        load_whisper_encoder(pickled)
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match=r"describes a 'llama' model, not whisper"):
        load_whisper_encoder(other)
    with pytest.raises(FileNotFoundError, match=r"no Whisper model directory at"):
        load_whisper_encoder(tmp_path / "nothing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"is neither a Hugging Face Whisper dir \(config\.json\) nor a CTranslate2 one"):
        load_whisper_encoder(empty)


# ---------------------------------------------------------------------------------------------
# The real tiny.en, when its base is fetched (`spokenlm bases fetch`)


def _tiny_en_dir() -> Path:
    try:
        from spokenlm.bases import WHISPER_TINY_EN, resolve_base

        return resolve_base(WHISPER_TINY_EN)
    except Exception as e:  # ImportError before bases.py, BaseError when not fetched
        pytest.skip(f"Whisper tiny.en base not available: {e}")


def test_real_tiny_en_encoder_matches_its_own_30s_window() -> None:
    from transformers import WhisperFeatureExtractor

    path = _tiny_en_dir()
    encoder = load_whisper_encoder(path)
    assert (encoder.output_dim, encoder.num_layers) == (384, 4)
    model, _ = load_whisper_model(path)
    wav = torch.zeros(480_000)
    wav[:48_000] = _audio(48_000)
    features = WhisperFeatureExtractor()(wav.numpy(), sampling_rate=16_000, return_tensors="pt").input_features
    with torch.no_grad():
        ref = model.model.encoder(features).last_hidden_state
        ours = encoder(wav[None], torch.tensor([480_000])).features
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)


def test_bf16_autocast_keeps_features_close_and_float32(tmp_path, batch) -> None:
    wav, lengths = batch
    fp32 = _tiny()
    bf16 = _tiny(bf16=True)
    with torch.no_grad():
        a, b = fp32(wav, lengths), bf16(wav, lengths)
    assert b.features.dtype == torch.float32 and torch.equal(a.lengths, b.lengths)
    assert ((a.features - b.features).norm() / a.features.norm()) < 0.05
    assert not torch.equal(a.features, b.features)  # it did run in bfloat16
    save_whisper_encoder(bf16, tmp_path / "bf16")
    assert json.loads((tmp_path / "bf16" / "encoder.json").read_text())["bf16"] is True
    assert load_encoder(tmp_path / "bf16").config.bf16
    assert not load_whisper_encoder(tmp_path / "bf16", bf16=False).config.bf16
