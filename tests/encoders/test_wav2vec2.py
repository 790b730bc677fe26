"""Tests for spokenlm/encoders/wav2vec2.py on tiny random models.

The key check is parity: a tiny transformers Wav2Vec2Model is written out as an original-fairseq
checkpoint (fairseq key names, fairseq config), loaded back through fairseq2, and must reproduce
transformers' hidden states layer by layer on a padded batch.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import types
import typing
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from spokenlm.encoders.base import EncoderOutput
from spokenlm.encoders.wav2vec2 import (
    Wav2Vec2Encoder,
    build_wav2vec2_encoder,
    load_wav2vec2_encoder,
    save_wav2vec2_encoder,
    wav2vec2_base,
    wav2vec2_tiny,
)

LENGTHS = [8000, 5600, 3210]  # samples at 16 kHz; the longest fills the batch, the others pad


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    wav = torch.randn(len(LENGTHS), max(LENGTHS), generator=g) * 0.1  # (B, S)
    lengths = torch.tensor(LENGTHS)
    for i, n in enumerate(LENGTHS):
        wav[i, n:] = 0.0
    return wav, lengths


def _tiny(**changes: object) -> Wav2Vec2Encoder:
    torch.manual_seed(0)
    return build_wav2vec2_encoder(replace(wav2vec2_tiny(), **changes)).eval()


def _conv_formula(n: int, convs: list[tuple[int, int]]) -> int:
    for kernel, stride in convs:
        n = (n - kernel) // stride + 1
    return n


# ---------------------------------------------------------------------------------------------
# Config and shapes


def test_presets_are_valid_and_run_at_50_hz() -> None:
    base, tiny = wav2vec2_base(), wav2vec2_tiny()
    base.validate()  # config only: BASE is never instantiated here
    assert base.model_dim == 768 and base.num_layers == 12
    assert base.frame_rate_hz == tiny.frame_rate_hz == 50.0
    assert base.receptive_field == tiny.receptive_field == 400

    encoder = _tiny()
    assert encoder.output_dim == 64 and encoder.frame_rate_hz == 50.0
    assert sum(p.numel() for p in encoder.parameters()) < 500_000


def test_output_lengths_follow_conv_formula(batch) -> None:
    wav, lengths = batch
    encoder = _tiny()
    out = encoder(wav, lengths)
    expected = [_conv_formula(n, encoder.config.conv_layers) for n in LENGTHS]
    assert isinstance(out, EncoderOutput)
    assert out.lengths.tolist() == expected == [24, 17, 9]
    assert out.lengths.dtype == torch.int64
    assert out.features.shape == (3, 24, 64)
    assert out.frame_rate_hz == 50.0
    assert out.hidden_states.shape == (encoder.num_layers + 1, 3, 24, 64)
    # one second of audio gives the familiar 49 frames; the receptive field gives exactly one
    assert encoder.output_lengths(torch.tensor([16000, 400])).tolist() == [49, 1]
    # frames past each item's length are zero
    assert out.features[2, 9:].abs().max() == 0 and out.hidden_states[:, 1, 17:].abs().max() == 0


def _assert_batched_equals_single(encoder: Wav2Vec2Encoder, wav: torch.Tensor, lengths: torch.Tensor) -> None:
    out = encoder(wav, lengths)
    for i, n in enumerate(lengths.tolist()):
        single = encoder(wav[i : i + 1, :n], lengths[i : i + 1])
        t = int(single.lengths[0])
        assert t == out.lengths[i]
        torch.testing.assert_close(out.hidden_states[:, i, :t], single.hidden_states[:, 0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(out.features[i, :t], single.features[0], atol=1e-5, rtol=1e-4)


def test_batched_equals_single_under_padding(batch, fairseq_tiny) -> None:
    wav, lengths = batch
    with torch.no_grad():
        _assert_batched_equals_single(_tiny(), wav, lengths)  # hf backend, layer-norm convs
        _assert_batched_equals_single(fairseq_tiny["encoder"], wav, lengths)  # fairseq2 backend


def test_layer_index_picks_that_hidden_state(batch) -> None:
    wav, lengths = batch
    last = _tiny()(wav, lengths)
    torch.testing.assert_close(last.features, last.hidden_states[-1], atol=0, rtol=0)
    for layer in range(3):
        out = _tiny(layer=layer)(wav, lengths)  # same seed, same weights
        torch.testing.assert_close(out.features, last.hidden_states[layer], atol=0, rtol=0)


def test_weighted_layers_are_trainable(batch) -> None:
    wav, lengths = batch
    encoder = _tiny(layer="weighted")
    assert any(p is encoder.layer_logits for p in encoder.parameters())
    out = encoder(wav, lengths)
    # zero logits start as the plain mean of all L + 1 states
    torch.testing.assert_close(out.features, out.hidden_states.mean(0), atol=1e-6, rtol=1e-5)
    (out.features * torch.randn_like(out.features)).sum().backward()
    assert encoder.layer_logits.grad is not None
    assert encoder.layer_logits.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------
# Errors at the boundary


def test_bad_inputs_raise_named_errors(batch) -> None:
    wav, lengths = batch
    encoder = _tiny()
    cases = [
        ((wav[0], lengths[:1]), "wav must be (B, S) float audio, got shape (8000,)"),
        ((wav.to(torch.int16), lengths), "wav must be float audio, got dtype torch.int16"),
        ((wav, lengths[:2]), "lengths must have shape (3,) to match wav, got (2,)"),
        ((wav, lengths.float()), "lengths must be integer sample counts, got dtype torch.float32"),
        ((wav, torch.tensor([8001, 10, 10])), "lengths[0]=8001 exceeds wav.shape[1]=8000"),
        ((wav, torch.tensor([8000, 399, 400])), "lengths[1]=399 is shorter than one frame (400 samples)"),
    ]
    for args, message in cases:
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            encoder(*args)


def test_bad_config_raises_named_errors() -> None:
    cases = [
        (replace(wav2vec2_tiny(), backend="espnet"), "backend must be 'hf' or 'fairseq2', got 'espnet'"),
        (replace(wav2vec2_tiny(), layer=3), "layer must be 'last', 'weighted' or an int in [0, 2], got 3"),
        (replace(wav2vec2_tiny(), layer="mean"), "layer must be 'last', 'weighted' or an int in [0, 2], got 'mean'"),
        (
            replace(wav2vec2_tiny(), arch=wav2vec2_tiny().arch | {"num_attention_heads": 5}),
            "model dim 64 is not divisible by 5 attention heads",
        ),
    ]
    for config, message in cases:
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            config.validate()


# ---------------------------------------------------------------------------------------------
# Save / load


def test_save_load_round_trip_is_exact(batch, tmp_path: Path) -> None:
    wav, lengths = batch
    encoder = _tiny(layer="weighted")
    with torch.no_grad():
        encoder.layer_logits.copy_(torch.tensor([0.3, -1.0, 2.0]))
    save_wav2vec2_encoder(encoder, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "config.json",
        "encoder.json",
        "layer_weights.safetensors",
        "model.safetensors",
        "preprocessor_config.json",
    ]
    manifest = json.loads((tmp_path / "encoder.json").read_text())
    assert manifest["kind"] == "wav2vec2" and manifest["backend"] == "hf" and manifest["layer"] == "weighted"

    loaded = load_wav2vec2_encoder(tmp_path)
    assert loaded.config == encoder.config and not loaded.training
    with torch.no_grad():
        a, b = encoder(wav, lengths), loaded(wav, lengths)
    assert torch.equal(a.features, b.features) and torch.equal(a.hidden_states, b.hidden_states)

    # the bundle is also a plain Hugging Face Wav2Vec2 directory
    from transformers import Wav2Vec2Model

    hf = Wav2Vec2Model.from_pretrained(tmp_path, use_safetensors=True).eval()
    with torch.no_grad():
        ref = _hf_hidden_states(hf, wav, lengths, normalize=True)
    torch.testing.assert_close(ref, a.hidden_states, atol=1e-5, rtol=1e-4)


def test_fairseq2_backend_round_trip_is_exact(batch, fairseq_tiny, tmp_path: Path) -> None:
    wav, lengths = batch
    encoder = fairseq_tiny["encoder"]
    save_wav2vec2_encoder(encoder, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["encoder.json", "model.safetensors"]
    loaded = load_wav2vec2_encoder(tmp_path)
    assert loaded.config == encoder.config
    with torch.no_grad():
        assert torch.equal(encoder(wav, lengths).hidden_states, loaded(wav, lengths).hidden_states)


def test_hf_ctc_dir_loads_its_base_model(batch, tmp_path: Path) -> None:
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

    wav, lengths = batch
    torch.manual_seed(1)
    ctc = Wav2Vec2ForCTC(Wav2Vec2Config(**wav2vec2_tiny().arch, vocab_size=12)).eval()
    ctc.save_pretrained(tmp_path, safe_serialization=True)  # keys are "wav2vec2.*" + "lm_head.*"
    encoder = load_wav2vec2_encoder(tmp_path, layer=1)
    # no preprocessor_config.json: layer-norm models are taken to normalise, as they were trained
    assert encoder.config.normalize_waveform is True and encoder.config.layer == 1
    with torch.no_grad():
        ref = _hf_hidden_states(ctc.wav2vec2, wav, lengths, normalize=True)
        out = encoder(wav, lengths)
    torch.testing.assert_close(out.hidden_states, ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.features, ref[1], atol=1e-5, rtol=1e-4)


def test_pickled_only_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "wav2vec2"}))
    torch.save({}, tmp_path / "pytorch_model.bin")
    message = (
        f"{tmp_path} holds only pickled weights (pytorch_model.bin); spokenlm loads safetensors and "
        "never unpickles a model directory. Convert it once, where you trust the file: "
        "Wav2Vec2Model.from_pretrained(DIR).save_pretrained(OUT, safe_serialization=True)"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        load_wav2vec2_encoder(tmp_path)
    (tmp_path / "config.json").unlink()  # weights alone: same answer
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        load_wav2vec2_encoder(tmp_path)


def test_missing_path_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=re.escape(f"no wav2vec2 checkpoint at {tmp_path / 'nope'}")):
        load_wav2vec2_encoder(tmp_path / "nope")


# ---------------------------------------------------------------------------------------------
# Original fairseq checkpoints through fairseq2


def _hf_hidden_states(model, wav: torch.Tensor, lengths: torch.Tensor, *, normalize: bool) -> torch.Tensor:
    """transformers' own output for the batch: (L + 1, B, T, D), padded frames zeroed."""
    mask = torch.arange(wav.shape[1]) < lengths[:, None]  # (B, S)
    if normalize:  # as Wav2Vec2FeatureExtractor(do_normalize=True), per item over its own samples
        rows = []
        for i, n in enumerate(lengths.tolist()):
            x = wav[i, :n]
            x = (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-7)
            rows.append(torch.nn.functional.pad(x, (0, wav.shape[1] - n)))
        wav = torch.stack(rows)
    out = model(wav * mask, attention_mask=mask.long(), output_hidden_states=True)
    hidden = torch.stack(out.hidden_states)
    frames = torch.arange(hidden.shape[2]) < model._get_feat_extract_output_lengths(lengths)[:, None]
    return hidden * frames[None, :, :, None]


# transformers' Wav2Vec2Model names -> original fairseq wav2vec2 names (fairseq/models/wav2vec/wav2vec2.py)
_HF_TO_FAIRSEQ = [
    (r"^feature_extractor\.conv_layers\.(\d+)\.conv\.", r"feature_extractor.conv_layers.\1.0."),
    (r"^feature_projection\.layer_norm\.", "layer_norm."),
    (r"^feature_projection\.projection\.", "post_extract_proj."),
    (r"^masked_spec_embed$", "mask_emb"),
    (r"^encoder\.pos_conv_embed\.conv\.parametrizations\.weight\.original0$", "encoder.pos_conv.0.weight_g"),
    (r"^encoder\.pos_conv_embed\.conv\.parametrizations\.weight\.original1$", "encoder.pos_conv.0.weight_v"),
    (r"^encoder\.pos_conv_embed\.conv\.bias$", "encoder.pos_conv.0.bias"),
    (r"^encoder\.layers\.(\d+)\.attention\.", r"encoder.layers.\1.self_attn."),
    (r"^encoder\.layers\.(\d+)\.layer_norm\.", r"encoder.layers.\1.self_attn_layer_norm."),
    (r"^encoder\.layers\.(\d+)\.feed_forward\.intermediate_dense\.", r"encoder.layers.\1.fc1."),
    (r"^encoder\.layers\.(\d+)\.feed_forward\.output_dense\.", r"encoder.layers.\1.fc2."),
    # encoder.layer_norm.* and encoder.layers.N.final_layer_norm.* keep their names
]


def _fairseq_state_dict(hf_model, hf_config) -> dict[str, torch.Tensor]:
    state = {}
    for key, value in hf_model.state_dict().items():
        if key.startswith("feature_extractor.conv_layers.") and ".layer_norm." in key:
            # fairseq: layer-norm mode wraps LN as (TransposeLast, Fp32LayerNorm, TransposeLast) at .2;
            # default (group-norm) mode puts Fp32GroupNorm itself at .2 of the first conv only
            sub = ".2.1." if hf_config.feat_extract_norm == "layer" else ".2."
            fairseq_key = key.replace(".layer_norm.", sub)
        else:
            fairseq_key = key
            for pattern, replacement in _HF_TO_FAIRSEQ:
                fairseq_key, n = re.subn(pattern, replacement, fairseq_key)
                if n:
                    break
        state[fairseq_key] = value.clone()
    d, c = hf_config.hidden_size, hf_config.conv_dim[-1]
    state.setdefault("mask_emb", torch.randn(d))
    # pre-training heads a real checkpoint carries; the encoder must ignore them
    state |= {
        "quantizer.vars": torch.randn(1, 8, 8),
        "quantizer.weight_proj.weight": torch.randn(8, c),
        "quantizer.weight_proj.bias": torch.randn(8),
        "project_q.weight": torch.randn(16, 8),
        "project_q.bias": torch.randn(16),
        "final_proj.weight": torch.randn(16, d),
        "final_proj.bias": torch.randn(16),
    }
    return state


def _fairseq_model_cfg(hf_config) -> dict[str, object]:
    convs = list(zip(hf_config.conv_dim, hf_config.conv_kernel, hf_config.conv_stride))
    runs: list[list] = []  # "[(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32, 2, 2)] * 2", as fairseq writes it
    for conv in convs:
        if runs and runs[-1][0] == conv:
            runs[-1][1] += 1
        else:
            runs.append([conv, 1])
    spec = " + ".join(f"[{conv}]" + (f" * {n}" if n > 1 else "") for conv, n in runs)
    return {
        "_name": "wav2vec2",
        "extractor_mode": "layer_norm" if hf_config.feat_extract_norm == "layer" else "default",
        "conv_feature_layers": spec,
        "conv_bias": hf_config.conv_bias,
        "encoder_layers": hf_config.num_hidden_layers,
        "encoder_embed_dim": hf_config.hidden_size,
        "encoder_ffn_embed_dim": hf_config.intermediate_size,
        "encoder_attention_heads": hf_config.num_attention_heads,
        "activation_fn": "gelu",
        "layer_type": "transformer",
        "layer_norm_first": hf_config.do_stable_layer_norm,
        "conv_pos": hf_config.num_conv_pos_embeddings,
        "conv_pos_groups": hf_config.num_conv_pos_embedding_groups,
        "dropout": 0.1,
        "attention_dropout": 0.1,
        "activation_dropout": 0.0,
        "encoder_layerdrop": 0.05,
        "dropout_input": 0.1,
        "feature_grad_mult": 0.1,
        "final_dim": 16,
        "latent_vars": 4,
        "latent_groups": 2,
        "quantize_targets": True,
    }


# A stand-in for omegaconf, which is not installed: classes that pickle under omegaconf's names
# with omegaconf's state layout (_metadata / _parent / _content, value nodes holding _val).
class _ContainerMetadata:
    __module__, __qualname__ = "omegaconf.base", "ContainerMetadata"

    def __init__(self) -> None:
        self.ref_type, self.object_type = typing.Any, dict  # as omegaconf records an untyped DictConfig
        self.key_type, self.element_type = typing.Any, typing.Any
        self.optional, self.flags = True, {}


class _AnyNode:
    __module__, __qualname__ = "omegaconf.nodes", "AnyNode"

    def __init__(self, value: object, parent: object) -> None:
        self._metadata, self._parent, self._val = _ContainerMetadata(), parent, value


class _DictConfig:
    __module__, __qualname__ = "omegaconf.dictconfig", "DictConfig"

    def __init__(self, content: dict, parent: object = None) -> None:
        self._metadata, self._parent = _ContainerMetadata(), parent
        self._content = {
            k: _DictConfig(v, self) if isinstance(v, dict) else _AnyNode(v, self) for k, v in content.items()
        }


def _save_with_fake_omegaconf(obj: object, path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # pickle finds a class by module and qualname, so the fake modules exist only while saving
    for cls in (_ContainerMetadata, _AnyNode, _DictConfig):
        module = types.ModuleType(cls.__module__)
        setattr(module, cls.__qualname__, cls)
        monkeypatch.setitem(sys.modules, cls.__module__, module)
    monkeypatch.setitem(sys.modules, "omegaconf", types.ModuleType("omegaconf"))
    torch.save(obj, path)


VARIANTS = {
    # (HF arch changes, how the fairseq config is stored)
    "base-like group norm, post-LN, argparse args, legacy file": (
        {"feat_extract_norm": "group", "conv_bias": False, "do_stable_layer_norm": False},
        "args",
    ),
    "layer-norm convs, post-LN, hydra cfg dict": ({}, "cfg"),
    "lv60-like layer-norm convs, pre-LN, omegaconf cfg": ({"do_stable_layer_norm": True}, "omegaconf"),
}


def _write_fairseq_checkpoint(
    path: Path, arch_changes: dict, carrier: str, monkeypatch: pytest.MonkeyPatch, *, normalize: bool
):
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    torch.manual_seed(2)
    hf_config = Wav2Vec2Config(**(wav2vec2_tiny().arch | arch_changes))
    hf = Wav2Vec2Model(hf_config).eval()
    with torch.no_grad():  # move every weight off its init (LN = 1/0 would hide swapped norms)
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    state = _fairseq_state_dict(hf, hf_config)
    model_cfg = _fairseq_model_cfg(hf_config)
    task_cfg = {"_name": "audio_pretraining", "normalize": normalize, "sample_rate": 16000}
    if carrier == "args":  # argparse era (wav2vec_small.pt): one flat Namespace, no cfg
        flat = {k: v for k, v in (model_cfg | task_cfg).items() if k != "_name"}  # no _name before hydra
        args = argparse.Namespace(arch="wav2vec2", task="audio_pretraining", **flat)
        ckpt = {"args": args, "model": state, "optimizer_history": [], "extra_state": {}}
        torch.save(ckpt, path, _use_new_zipfile_serialization=False)  # 2020 files predate torch's zip format
    elif carrier == "cfg":  # hydra era, config already turned into plain containers
        torch.save({"args": None, "cfg": {"model": model_cfg, "task": task_cfg}, "model": state}, path)
    else:
        cfg = _DictConfig({"model": model_cfg, "task": task_cfg, "common": {"seed": 1}})
        _save_with_fake_omegaconf({"args": None, "cfg": cfg, "model": state}, path, monkeypatch)
    return hf


@pytest.fixture(scope="module")
def fairseq_tiny(tmp_path_factory) -> dict:
    """The default tiny architecture as a fairseq checkpoint, loaded through fairseq2."""
    path = tmp_path_factory.mktemp("fairseq") / "checkpoint_best.pt"
    with pytest.MonkeyPatch.context() as mp:
        hf = _write_fairseq_checkpoint(path, {}, "cfg", mp, normalize=True)
    return {"path": path, "hf": hf, "encoder": load_wav2vec2_encoder(path)}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_fairseq_checkpoint_matches_transformers(variant: str, batch, tmp_path, monkeypatch) -> None:
    arch_changes, carrier = VARIANTS[variant]
    wav, lengths = batch
    normalize = carrier != "args"
    path = tmp_path / "checkpoint.pt"
    hf = _write_fairseq_checkpoint(path, arch_changes, carrier, monkeypatch, normalize=normalize)

    encoder = load_wav2vec2_encoder(path)
    assert encoder.config.backend == "fairseq2" and not encoder.training
    assert encoder.config.normalize_waveform is normalize  # read from the task config
    with torch.no_grad():
        ref = _hf_hidden_states(hf, wav, lengths, normalize=normalize)
        out = encoder(wav, lengths)
    assert out.hidden_states.shape == ref.shape == (3, 3, 24, 64)
    assert out.lengths.tolist() == [24, 17, 9]
    for layer in range(ref.shape[0]):
        diff = (out.hidden_states[layer] - ref[layer]).abs().max().item()
        assert diff <= 1e-4, f"layer {layer} differs by {diff:.2e}"
    assert (out.features - ref[-1]).abs().max().item() <= 1e-4


def test_fairseq_finetuned_checkpoint_keeps_the_pretrained_encoder(batch, fairseq_tiny, tmp_path) -> None:
    wav, lengths = batch
    pretrained = torch.load(fairseq_tiny["path"], weights_only=True)
    # a CTC fine-tuned checkpoint nests the pre-trained model and its config under w2v_encoder / w2v_args
    state = {f"w2v_encoder.w2v_model.{k}": v for k, v in pretrained["model"].items()}
    state |= {"w2v_encoder.proj.weight": torch.randn(12, 64), "w2v_encoder.proj.bias": torch.randn(12)}
    cfg = {
        "model": {"_name": "wav2vec_ctc", "w2v_path": "/gone/best.pt", "w2v_args": pretrained["cfg"]},
        "task": {"_name": "audio_finetuning", "normalize": True},
    }
    path = tmp_path / "finetuned.pt"
    torch.save({"args": None, "cfg": cfg, "model": state}, path)
    encoder = load_wav2vec2_encoder(path)
    with torch.no_grad():
        expected = fairseq_tiny["encoder"](wav, lengths).hidden_states
        assert torch.equal(encoder(wav, lengths).hidden_states, expected)


_SIDE_EFFECTS: list[str] = []


def _side_effect() -> dict:
    _SIDE_EFFECTS.append("ran")
    return {}


class _Payload:
    def __reduce__(self):
        return (_side_effect, ())


def test_fairseq_checkpoint_with_foreign_pickles_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"cfg": {"model": {"_name": "wav2vec2"}}, "model": {}, "extra_state": _Payload()}, path)
    name = f"{_side_effect.__module__}._side_effect"
    message = (
        f"{path} pickles '{name}', which spokenlm will not unpickle (weights load with "
        "torch.load(weights_only=True)). Re-save it where you trust the file: "
        "torch.save({'model': ckpt['model'], 'cfg': {'model': <model config as a plain dict>}}, OUT)"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        load_wav2vec2_encoder(path)
    assert _SIDE_EFFECTS == []
