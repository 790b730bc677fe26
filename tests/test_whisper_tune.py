"""The transcriber's decoder LoRA (spokenlm/whisper_tune.py): CTranslate2 model.bin patching, the LoRA
merged into CTranslate2 against the same LoRA in torch, the training examples, and the bundle's copy;
on the tiny random Whisper of conftest.py."""

import dataclasses
import hashlib
import json
import math
import shutil

import numpy as np
import pytest
import torch

from spokenlm.audio import load_audio
from spokenlm.encoders.whisper import read_ctranslate2_model, write_ctranslate2_model
from spokenlm.transcriber import TranscriberConfig, WhisperTranscriber, pack_windows
from spokenlm.whisper_tune import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    WhisperTuneError,
    add_decoder_lora,
    ctranslate2_updates,
    decoder_loss,
    load_whisper_for_tuning,
    lora_target_pattern,
    read_decoder_lora,
    tuned_whisper_dir,
)


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_model_bin_copy_changes_only_the_named_variables(tiny_whisper, tmp_path):
    src = tiny_whisper["ct2_float32"] / "model.bin"
    write_ctranslate2_model(src, tmp_path / "same.bin", {})
    assert _sha(tmp_path / "same.bin") == _sha(src)
    before = read_ctranslate2_model(src).variables
    name = "decoder/layer_0/ffn/linear_0/weight"
    write_ctranslate2_model(src, tmp_path / "changed.bin", {name: before[name] + 1.0})
    after = read_ctranslate2_model(tmp_path / "changed.bin").variables
    assert torch.equal(after[name], before[name] + 1.0)
    assert all(torch.equal(after[k], v) for k, v in before.items() if k != name)


@pytest.mark.parametrize(
    ("source", "name", "value", "message"),
    [
        ("ct2_float32", "decoder/layer_9/ffn/linear_0/weight", None, r"has no variable decoder/layer_9/ffn/linear_0/weight$"),
        ("ct2_float32", "decoder/layer_0/ffn/linear_0/weight", torch.zeros(3, 3), r"has shape \[32, 16\], the new value \[3, 3\]$"),
        ("ct2_float32", "decoder/layer_0/ffn/linear_0/weight", torch.full((32, 16), math.nan), r"holds NaN or infinite values$"),
        ("ct2_int8", "decoder/layer_0/ffn/linear_0/weight", torch.zeros(32, 16), r"is stored as int8; only float variables can be replaced"),
    ],
)  # fmt: skip
def test_model_bin_changes_that_cannot_be_written_are_named(tiny_whisper, tmp_path, source, name, value, message):
    with pytest.raises(ValueError, match=message):
        write_ctranslate2_model(tiny_whisper[source], tmp_path / "out.bin", {name: value if value is not None else torch.zeros(1)})
    assert not (tmp_path / "out.bin").exists()


def _random_lora(tiny_whisper, path, *, rank=4, seed=0):
    """A LoRA on the tiny Whisper's decoder with visibly non-zero B (peft starts B at zero), saved
    with peft's own save_pretrained; and the model it is on."""
    torch.manual_seed(seed)
    model = add_decoder_lora(load_whisper_for_tuning(tiny_whisper["ct2_float32"]), rank=rank, alpha=8, dropout=0.0,
                             targets=("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"))  # fmt: skip
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.3)
    model.save_pretrained(str(path))
    return model.eval()


def test_the_base_reads_into_torch_as_transformers_loads_it(tiny_whisper, example_clips):
    from transformers import WhisperForConditionalGeneration

    ours = load_whisper_for_tuning(tiny_whisper["ct2_float32"])
    theirs = WhisperForConditionalGeneration.from_pretrained(tiny_whisper["hf"]).eval()
    frames = torch.randn(2, 40, 16)
    ids = torch.tensor([[28, 1, 2, 3], [28, 4, 5, 6]])
    with torch.no_grad():
        a = ours.proj_out(ours.model.decoder(input_ids=ids, encoder_hidden_states=frames).last_hidden_state)
        b = theirs.proj_out(theirs.model.decoder(input_ids=ids, encoder_hidden_states=frames).last_hidden_state)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert ours.proj_out.weight.data_ptr() == ours.model.decoder.embed_tokens.weight.data_ptr()


def test_the_lora_targets_only_the_decoder(tiny_whisper):
    model = add_decoder_lora(load_whisper_for_tuning(tiny_whisper["ct2_float32"]), rank=2, alpha=4, dropout=0.0,
                             targets=("q_proj", "fc2"))  # fmt: skip
    trained = sorted({n.split(".lora_")[0].removeprefix("base_model.model.") for n, p in model.named_parameters() if p.requires_grad})
    assert trained == [f"model.decoder.layers.{i}.{m}" for i in range(2) for m in ("encoder_attn.q_proj", "fc2", "self_attn.q_proj")]
    with pytest.raises(WhisperTuneError, match=r"^decoder LoRA targets must be among q_proj, k_proj, v_proj, out_proj, fc1, fc2; got \['conv1'\]$"):
        lora_target_pattern(["conv1"])


def test_the_tuned_decoder_in_ctranslate2_scores_as_the_lora_model_in_torch(tiny_whisper, example_clips, tmp_path):
    """Parity: the LoRA merged into the CTranslate2 base (float32) gives the forced log-probability
    of a text that the peft model gives in torch on the same mel features, and not the base's."""
    from faster_whisper.audio import pad_or_trim

    from spokenlm.compress.vocab import CharVocab

    model = _random_lora(tiny_whisper, tmp_path / "lora")
    config = TranscriberConfig(base=None, path=str(tiny_whisper["ct2_float32"]), compute_type="float32", cpu_threads=1,
                               max_tokens_per_second=1000.0, decoder_lora=str(tmp_path / "lora"))  # fmt: skip
    tuned = WhisperTranscriber(config)
    base = WhisperTranscriber(dataclasses.replace(config, decoder_lora=None))
    wav = load_audio(example_clips[0])
    vocab = CharVocab("abcdefghijklmnopqrstuvwxyz' ")
    text = "a cat sat"
    log_probs = [torch.zeros(50, vocab.size).log_softmax(-1)]
    (scored,) = tuned.score([wav], [text], log_probs, vocab)
    (plain,) = base.score([wav], [text], log_probs, vocab)
    mel = torch.from_numpy(pad_or_trim(tuned._features(wav.numpy())))[None].float()
    prompt, tokens = tuned._prompt, tuned._tokenizer.encode(" " + text)
    with torch.no_grad():
        logits = model(input_features=mel, decoder_input_ids=torch.tensor([prompt + tokens])).logits[0]
    logits = logits[:, : tuned._tokenizer.eot].log_softmax(-1)
    expected = sum(logits[len(prompt) - 1 + k, t].item() for k, t in enumerate(tokens))
    assert scored.ctc_scores.decoder == pytest.approx(expected, rel=5e-3)
    assert abs(plain.ctc_scores.decoder - expected) > 0.1  # the LoRA changed what the decoder says
    # written once: a second transcriber reads the same cached copy
    assert tuned_whisper_dir(config.path, tmp_path / "lora") == tuned_whisper_dir(config.path, tmp_path / "lora")


def test_the_lora_s_change_lands_in_ctranslate2_s_fused_matrices(tiny_whisper, tmp_path):
    _random_lora(tiny_whisper, tmp_path / "lora", rank=2)
    deltas = read_decoder_lora(tmp_path / "lora")
    base = read_ctranslate2_model(tiny_whisper["ct2_float32"]).variables
    updates = ctranslate2_updates(deltas, base)
    fused = "decoder/layer_1/self_attention/linear_0/weight"  # q | k | v
    for part, proj in enumerate(("q_proj", "k_proj", "v_proj")):
        torch.testing.assert_close(updates[fused][16 * part : 16 * (part + 1)] - base[fused][16 * part : 16 * (part + 1)],
                                   deltas[f"model.decoder.layers.1.self_attn.{proj}.weight"])  # fmt: skip
    cross_kv = "decoder/layer_0/attention/linear_1/weight"  # k | v of the cross-attention
    torch.testing.assert_close(updates[cross_kv][16:] - base[cross_kv][16:], deltas["model.decoder.layers.0.encoder_attn.v_proj.weight"])
    assert not any(name.startswith("encoder/") for name in updates)


def test_a_lora_that_cannot_be_applied_is_named(tiny_whisper, tmp_path):
    from safetensors.torch import load_file, save_file

    with pytest.raises(WhisperTuneError, match=r"is not a decoder LoRA: no adapter_config.json$"):
        read_decoder_lora(tmp_path)
    _random_lora(tiny_whisper, tmp_path / "lora", rank=2)
    weights = load_file(str(tmp_path / "lora" / ADAPTER_WEIGHTS))
    key = next(k for k in weights if "lora_A" in k)
    for name, changed, message in [
        ("nan", {**weights, key: torch.full_like(weights[key], math.nan)}, r"holds NaN or infinite values$"),
        ("alien", {**weights, "base_model.model.model.encoder.layers.0.fc1.lora_A.weight": weights[key].clone()},
         r"model.encoder.layers.0.fc1.lora_A.weight is not a LoRA weight of a Whisper decoder layer$"),
        ("half", {k: v for k, v in weights.items() if k != key}, r"has lora_B but not its pair$"),
    ]:  # fmt: skip
        bad = tmp_path / name
        shutil.copytree(tmp_path / "lora", bad)
        save_file(changed, str(bad / ADAPTER_WEIGHTS))
        with pytest.raises(WhisperTuneError, match=message):
            read_decoder_lora(bad)
    (tmp_path / "lora" / ADAPTER_CONFIG).write_text(json.dumps({"r": 2, "lora_alpha": 8, "use_dora": True}))
    with pytest.raises(WhisperTuneError, match=r"use_dora is set; only plain LoRA \(B·A added to a weight\) can be merged here$"):
        read_decoder_lora(tmp_path / "lora")
    (tmp_path / "lora" / ADAPTER_CONFIG).write_text(json.dumps({"r": 0, "lora_alpha": 8}))
    with pytest.raises(WhisperTuneError, match=r"r must be a positive int and lora_alpha a number, got 0, 8$"):
        read_decoder_lora(tmp_path / "lora")


def test_decoder_examples_are_what_the_transcriber_reads(tiny_whisper_timestamps, example_clips):
    """Packed: one example per chunk, prompted with its start's timestamp, its target the text, its
    end's timestamp and the next chunk's start (<|endoftext|> after the last); frames the window's
    encoding. Unpacked: the no-timestamps prompt and <|endoftext|>."""
    from faster_whisper.audio import pad_or_trim

    config = TranscriberConfig(base=None, path=str(tiny_whisper_timestamps["ct2_float32"]), compute_type="float32",
                               cpu_threads=1, pack_s=26.0)  # fmt: skip
    transcriber = WhisperTranscriber(config)
    waves = [load_audio(c)[: 3 * 16000] for c in example_clips[:2]] * 2
    texts = ["a cat", "the dog", "a dog", "cat"]
    examples = transcriber.decoder_examples(waves, texts)
    (window,) = pack_windows([w.shape[-1] / 16000 for w in waves], texts, 26.0, 2.0)
    tok, ts = transcriber._tokenizer, transcriber._timestamp
    assert len(examples) == 4
    mel = pad_or_trim(transcriber._features(transcriber._window_audio(window, [w.numpy() for w in waves])))
    encoded = transcriber._encode(mel)[0]
    for i, (example, offset) in enumerate(zip(examples, window.offsets)):
        assert example.prompt == [*transcriber._stamped, ts(offset)]
        end = ts(offset + waves[i].shape[-1] / 16000)
        after = ts(window.offsets[i + 1]) if i < 3 else tok.eot
        assert example.target == [*tok.encode(" " + texts[i]), end, after]
        np.testing.assert_allclose(example.frames.astype(np.float32), encoded, rtol=1e-3, atol=1e-3)
    alone = WhisperTranscriber(dataclasses.replace(config, pack_s=0.0)).decoder_examples(waves[:2], texts[:2])
    assert [e.prompt for e in alone] == [transcriber._prompt] * 2
    assert [e.target for e in alone] == [[*tok.encode(" " + t), tok.eot] for t in texts[:2]]


def test_the_loss_scores_only_the_targets(tiny_whisper):
    model = load_whisper_for_tuning(tiny_whisper["ct2_float32"])
    frames = torch.randn(2, 30, 16)
    prompts, targets = [[28, 35], [28, 35]], [[1, 2, 3], [4, 27]]
    loss = decoder_loss(model, frames, prompts, targets, pad_id=27)
    with torch.no_grad():
        total, count = 0.0, 0
        for row in range(2):
            ids = torch.tensor([prompts[row] + targets[row][:-1]])
            logits = model.proj_out(model.model.decoder(input_ids=ids, encoder_hidden_states=frames[row : row + 1]).last_hidden_state)[0]
            logp = logits.log_softmax(-1)
            for k, t in enumerate(targets[row]):
                total -= logp[len(prompts[row]) - 1 + k, t].item()
                count += 1
    assert float(loss) == pytest.approx(total / count, rel=1e-4)


def test_the_committed_part_s_transcriber_reads_with_its_lora():
    """models/parts/speechlm: the bundle's transcriber is the one its transcriber recipe picked, with
    the decoder LoRA it carries (decoder layers only, rank and scale as trained)."""
    from pathlib import Path

    from spokenlm.model import load_bundle_transcriber_config
    from spokenlm.transcriber import read_transcriber_config

    part = Path(__file__).resolve().parents[1] / "models" / "parts" / "speechlm"
    config = load_bundle_transcriber_config(part / "bundle")
    picked = read_transcriber_config(part / "transcriber")
    assert config.decoder_lora == "whisper_lora" and picked.decoder_lora == "models/parts/speechlm/bundle/whisper_lora"
    assert dataclasses.replace(config, decoder_lora=None) == dataclasses.replace(picked, decoder_lora=None)
    deltas = read_decoder_lora(part / "bundle" / "whisper_lora")
    assert len(deltas) == 4 * 10  # 4 decoder layers x (self q k v out, cross q k v out, fc1, fc2)
    assert all(torch.isfinite(d).all() and d.abs().max() > 0 for d in deltas.values())


def test_two_loaders_writing_the_same_tuned_copy_both_get_it(tiny_whisper, tmp_path, monkeypatch):
    """Serve replicas load a bundle at once: the one whose copy lands second uses the first's."""
    import os

    import spokenlm.whisper_tune as wt

    _random_lora(tiny_whisper, tmp_path / "lora", rank=2)
    real_replace = os.replace

    def racing_replace(src, dst):  # another process finishes its copy just before this one
        if not os.path.exists(dst):
            shutil.copytree(src, dst)
        return real_replace(src, dst)

    monkeypatch.setattr(wt.os, "replace", racing_replace)
    out = tuned_whisper_dir(tiny_whisper["ct2_float32"], tmp_path / "lora", cache=tmp_path / "cache")
    assert (out / "model.bin").is_file()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [out.name]  # its own temporary copy is gone
