import json
import re
import shutil
import subprocess
import sys

import pytest
import torch

from spokenlm.audio import SAMPLE_RATE, load_audio
from spokenlm.lm import GenerationConfig
from spokenlm.model import BundleError, load_bundle, save_bundle, speed_up_llm
from spokenlm.tasks import TASK_NAMES, Entities, TaskRequest

GREEDY = GenerationConfig(max_new_tokens=8)


def _requests() -> list[TaskRequest]:
    extra = {"qa": {"question": "who?"}, "translate": {"target_lang": "es"}}
    return [TaskRequest(task=t, **extra.get(t, {})) for t in TASK_NAMES]


def test_import_spokenlm_pulls_in_no_service_frameworks():
    code = (
        "import sys, spokenlm, spokenlm.model, spokenlm.cli, spokenlm.demo; "
        "print([m for m in ('ray', 'gradio', 'fastapi') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_bundle_layout_matches_the_design(tiny_bundle):
    names = {p.name for p in tiny_bundle.iterdir()}
    assert {"spokenlm.json", "encoder", "compressor", "adapter.safetensors", "llm", "lora"} <= names
    assert (tiny_bundle / "llm" / "config.json").is_file() and (tiny_bundle / "llm" / "model.safetensors").is_file()
    meta = json.loads((tiny_bundle / "spokenlm.json").read_text())
    assert meta["format_version"] == 1 and meta["trained"] is False
    assert not list(tiny_bundle.rglob("*.bin")) and not list(tiny_bundle.rglob("*.pt"))


def test_every_task_runs_and_returns_its_typed_result(tiny_bundle, example_clips):
    model = load_bundle(tiny_bundle)
    wav = load_audio(example_clips[0])
    outputs = model.run([wav] * len(TASK_NAMES), _requests(), GREEDY)
    duration = wav.shape[-1] / SAMPLE_RATE
    for request, output in zip(_requests(), outputs):
        assert output.request == request
        assert type(output.result).__name__ == {
            "asr": "Transcript", "translate": "Translation", "ner": "Entities", "sentiment": "Sentiment",
            "dialog-act": "DialogActs", "qa": "Answer", "summarize": "Summary",
        }[request.task]  # fmt: skip
        assert output.tokens_per_second > 0
        assert list(output.timing_ms) == ["encoder", "compress", "adapter", "llm"]
        assert isinstance(output.transcript, str)  # the CTC compressor's greedy transcript
        if isinstance(output.result, Entities):
            for e in output.result.entities:
                assert e.start_s is None or 0 <= e.start_s <= e.end_s <= duration


def test_bundle_round_trip_gives_identical_outputs(tiny_bundle, example_clips, tmp_path):
    first = load_bundle(tiny_bundle)
    second = load_bundle(save_bundle(first, tmp_path / "copy"))
    waves = [load_audio(p) for p in example_clips]
    a, b = first.encode_recordings(waves), second.encode_recordings(waves)
    torch.testing.assert_close(a.embeddings, b.embeddings, rtol=0, atol=0)
    assert a.spans_s == b.spans_s and a.transcripts == b.transcripts
    requests = [TaskRequest(task="asr")] * len(waves)
    assert [o.result for o in first.run(waves, requests, GREEDY)] == [o.result for o in second.run(waves, requests, GREEDY)]


def test_long_audio_is_chunked_and_its_tokens_joined_in_order(tiny_bundle, example_clips):
    model = load_bundle(tiny_bundle)
    speech = torch.cat([load_audio(p) for p in example_clips])
    silence = torch.zeros(SAMPLE_RATE)
    long = torch.cat([speech, silence] * 10)  # ~ 73 s: three chunks of at most 30 s
    duration = long.shape[-1] / SAMPLE_RATE
    assert duration > 60
    seen = []  # padded sample counts of every encoder call: no call may see more than 30 s
    hook = model.encoder.register_forward_pre_hook(lambda _, args: seen.append(args[0].shape[-1]))
    tokens = model.encode_recordings([long, speech])
    hook.remove()
    assert max(seen) <= 30 * SAMPLE_RATE
    spans = tokens.spans_s[0]
    assert len(spans) == int(tokens.lengths[0])
    assert all(s0 < e0 <= s1 for (s0, e0), (s1, _) in zip(spans, spans[1:]))  # ordered, disjoint
    assert 0 <= spans[0][0] and spans[-1][1] <= duration + 1e-6
    assert spans[-1][1] > 60  # tokens from the last chunk carry its time offset
    assert tokens.durations_s == pytest.approx([duration, speech.shape[-1] / SAMPLE_RATE])
    # The short recording in the same call is unaffected by its long neighbour.
    alone = model.encode_recordings([speech])
    n = int(alone.lengths[0])
    torch.testing.assert_close(tokens.embeddings[1, :n], alone.embeddings[0, :n])
    assert tokens.spans_s[1] == alone.spans_s[0]


def test_load_bundle_refuses_what_it_cannot_load_safely(tiny_bundle, tmp_path):
    with pytest.raises(BundleError, match=re.escape(f"{tmp_path} is not a spokenlm bundle: spokenlm.json is missing")):
        load_bundle(tmp_path)

    copy = tmp_path / "pickled"
    shutil.copytree(tiny_bundle, copy)
    (copy / "adapter.safetensors").rename(copy / "adapter.bin")
    with pytest.raises(BundleError, match=re.escape("bundles hold safetensors only; pickles are refused")):
        load_bundle(copy)

    meta = json.loads((tiny_bundle / "spokenlm.json").read_text())
    meta["format_version"] = 99
    bad = tmp_path / "future"
    shutil.copytree(tiny_bundle, bad)
    (bad / "spokenlm.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="unsupported bundle format_version 99, expected 1"):
        load_bundle(bad)


def test_run_validates_requests_before_any_work(tiny_bundle, example_clips):
    model = load_bundle(tiny_bundle)
    wav = load_audio(example_clips[0])
    with pytest.raises(ValueError, match=re.escape("task 'qa' needs a non-empty question")):
        model.run([wav], [TaskRequest(task="qa")])
    with pytest.raises(ValueError, match=re.escape("got 1 recordings but 2 requests")):
        model.run([wav], [TaskRequest(task="asr")] * 2)


def _encoders():
    from spokenlm.encoders.dinosr import dinosr_tiny
    from spokenlm.encoders.sylber import sylber_tiny
    from spokenlm.encoders.wav2vec2 import wav2vec2_tiny

    return {"wav2vec2": wav2vec2_tiny(), "dinosr": dinosr_tiny(), "sylber": sylber_tiny()}


def _compressors():
    from spokenlm.compress import CTCCompressorConfig, StackCompressorConfig, SyllableCompressorConfig

    return {
        "ctc-blank-removal": lambda d: CTCCompressorConfig(input_dim=d, mode="blank_removal"),
        "stack": lambda d: StackCompressorConfig(input_dim=d, k=4),
        "syllable": lambda d: SyllableCompressorConfig(input_dim=d),
    }


@pytest.mark.parametrize("encoder", ["wav2vec2", "dinosr", "sylber"])
@pytest.mark.parametrize("compressor", ["ctc-blank-removal", "stack", "syllable"])
def test_every_encoder_and_compressor_plugs_into_speechlm(tmp_path, example_clips, encoder, compressor):
    from spokenlm.demo import build_untrained_bundle

    bundle = build_untrained_bundle(tmp_path / "b", encoder=_encoders()[encoder], compressor=_compressors()[compressor])
    model = load_bundle(bundle)
    wav = load_audio(example_clips[0])
    (output,) = model.run([wav], [TaskRequest(task="asr")], GREEDY)
    assert isinstance(output.result.text, str) and output.tokens_per_second > 0
    assert (output.transcript is not None) == compressor.startswith("ctc")
    again = load_bundle(save_bundle(model, tmp_path / "again"))
    assert again.run([wav], [TaskRequest(task="asr")], GREEDY)[0].result == output.result


def test_a_bundled_draft_round_trips_and_leaves_outputs_unchanged(tiny_bundle, example_clips, tmp_path):
    from spokenlm.adapter import AdapterConfig, build_adapter
    from spokenlm.lm import DraftLM, build_llm
    from spokenlm.model import load_bundle_draft

    model = load_bundle(tiny_bundle)
    assert model.draft is None and load_bundle_draft(tiny_bundle) is None
    torch.manual_seed(1)
    architecture = {
        "model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": len(model.llm.tokenizer),
    }  # fmt: skip
    draft_llm = build_llm(architecture, model.llm.tokenizer)
    adapter = build_adapter(AdapterConfig(input_dim=model.llm.model_dim, output_dim=32, hidden_dim=16))
    model.draft = DraftLM(llm=draft_llm, adapter=adapter)
    path = save_bundle(model, tmp_path / "with-draft")
    assert (path / "draft" / "llm" / "model.safetensors").is_file()
    assert (path / "draft" / "adapter.safetensors").is_file()

    loaded = load_bundle(path)
    assert isinstance(loaded.draft, DraftLM) and loaded.draft.adapter.config == adapter.config
    wavs = [load_audio(example_clips[0])] * len(TASK_NAMES)
    plain = loaded.run(wavs, _requests(), GenerationConfig(max_new_tokens=8, draft_tokens=0))
    speculative = loaded.run(wavs, _requests(), GenerationConfig(max_new_tokens=8, draft_tokens=3))
    assert [o.result for o in speculative] == [o.result for o in plain]
    assert [o.result for o in model.run(wavs, _requests(), GREEDY)] == [o.result for o in plain]


def test_a_draft_with_another_vocabulary_is_refused(tiny_bundle):
    from spokenlm.lm import DraftLM, build_llm
    from spokenlm.model import SpeechLM
    from spokenlm.tokenizer import train_bpe_tokenizer

    model = load_bundle(tiny_bundle)
    other = train_bpe_tokenizer(["an unrelated vocabulary of words"] * 8, vocab_size=280)
    architecture = {"model_type": "llama", "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                    "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": len(other)}  # fmt: skip
    with pytest.raises(ValueError, match="draft and target tokenizers differ"):
        SpeechLM(
            encoder=model.encoder, compressor=model.compressor, adapter=model.adapter, llm=model.llm,
            draft=DraftLM(llm=build_llm(architecture, other)),
        )  # fmt: skip


def test_ctc_draft_decoding_gives_the_same_results(tiny_bundle, example_clips):
    model = load_bundle(tiny_bundle)
    wavs = [load_audio(example_clips[0])] * len(TASK_NAMES)
    plain = model.run(wavs, _requests(), GenerationConfig(max_new_tokens=8))
    drafted = model.run(wavs, _requests(), GenerationConfig(max_new_tokens=8, ctc_draft=True))
    assert [o.result for o in drafted] == [o.result for o in plain]
    # ASR answered from the transcript: the draft keeps the references (and openings) of the others
    model.llm.asr_from_transcript = True
    direct = model.run(wavs, _requests(), GenerationConfig(max_new_tokens=8, ctc_draft=True))
    assert [o.result for o in direct if o.request.task != "asr"] == [o.result for o in plain if o.request.task != "asr"]


def test_a_hybrid_prompt_bundle_puts_the_ctc_transcript_in_its_prompts(tmp_path, tiny_bundle, example_clips):
    """The bundle records how its LLM was prompted; every loader and `request_prompts` follow it."""
    import json
    import shutil

    from spokenlm.audio import load_audio
    from spokenlm.model import load_bundle, load_bundle_llm, request_prompts, save_bundle
    from spokenlm.tasks import TRANSCRIPT_HINT, TaskRequest

    model = load_bundle(tiny_bundle)
    assert not model.llm.prompt_transcript
    model.llm.prompt_transcript = True
    hybrid = save_bundle(model, tmp_path / "hybrid")
    assert json.loads((hybrid / "spokenlm.json").read_text())["llm"]["prompt_transcript"] is True
    llm = load_bundle_llm(hybrid)
    assert llm.prompt_transcript
    chars = [[("h", 0.0, 0.1), ("i", 0.1, 0.2)]]
    (prompt,) = request_prompts(llm, [TaskRequest(task="asr")], chars)
    assert f"{TRANSCRIPT_HINT}hi\n" in prompt
    with pytest.raises(ValueError, match="trained with the CTC transcript in its prompt, but the compressor gave none"):
        request_prompts(llm, [TaskRequest(task="asr")], None)
    # and the whole graph runs with it
    reloaded = load_bundle(hybrid)
    (out,) = reloaded.run([load_audio(example_clips[0])], [TaskRequest(task="asr")])
    assert isinstance(out.result.text, str)
    shutil.rmtree(hybrid)


def test_the_bundle_saves_the_config_it_was_built_from(tiny_bundle, tmp_path):
    """build_speechlm's SpeechLMConfig, adapter and LoRA nested, is in spokenlm.json and loads back equal."""
    from spokenlm.adapter import AdapterConfig
    from spokenlm.lm import LoRAConfig
    from spokenlm.model import Pretrained, SpeechLMConfig, config_from_json, config_to_json

    model = load_bundle(tiny_bundle)
    meta = json.loads((tiny_bundle / "spokenlm.json").read_text())
    config = model.config
    assert isinstance(config, SpeechLMConfig) and json.loads(json.dumps(config_to_json(config))) == meta["config"]
    assert config.llm.lora == LoRAConfig(rank=4, alpha=8)
    assert config.adapter == AdapterConfig(hidden_dim=64)  # its dims are the parts' (build_speechlm sets them)
    assert model.adapter.config.hidden_dim == 64 and model.llm.has_lora
    assert load_bundle(save_bundle(model, tmp_path / "again")).config == config
    pretrained = SpeechLMConfig(encoder=Pretrained(path="/enc", overrides={"bf16": True}),
                                compressor=Pretrained(path="/ctc"), llm=config.llm)  # fmt: skip
    assert config_from_json(json.loads(json.dumps(config_to_json(pretrained)))) == pretrained


def test_a_bundle_stored_in_bf16_loads_its_rounded_weights_in_fp32(tiny_bundle, tmp_path):
    from safetensors import safe_open

    model = load_bundle(tiny_bundle)
    torch.manual_seed(0)
    with torch.no_grad():  # trained-looking weights: LoRA's B starts at zero
        for name, p in model.llm.model.named_parameters():
            if ".lora_" in name:
                p.add_(0.1 * torch.randn_like(p))
    path = save_bundle(model, tmp_path / "bf16", weights_dtype=torch.bfloat16)
    full = save_bundle(model, tmp_path / "fp32")
    files = ["compressor/model.safetensors", "adapter.safetensors", "lora/adapter_model.safetensors"]
    for file in files:
        with safe_open(str(path / file), framework="pt") as f:
            assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}, file
        assert (path / file).stat().st_size < 0.6 * (full / file).stat().st_size, file

    again = load_bundle(path)
    for before, after in [(model.compressor, again.compressor), (model.adapter, again.adapter), (model.llm.model, again.llm.model)]:
        wanted = {k: v for k, v in before.state_dict().items() if v.is_floating_point()}
        got = after.state_dict()
        trained = [k for k in wanted if before is not model.llm.model or ".lora_" in k]
        assert trained
        for k in trained:
            assert got[k].dtype == torch.float32, k
            torch.testing.assert_close(got[k], wanted[k].to(torch.bfloat16).float(), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"weights_dtype must be a floating torch dtype or None, got torch.int8"):
        save_bundle(model, tmp_path / "bad", weights_dtype=torch.int8)


def test_llm_speedups_keep_the_outputs(tiny_bundle, example_clips):
    from spokenlm.lm import LLMSpeedups

    def trained():
        model = load_bundle(tiny_bundle)
        torch.manual_seed(0)
        with torch.no_grad():  # a LoRA that changes the function: B starts at zero
            for name, p in model.llm.model.named_parameters():
                if ".lora_B" in name:
                    p.add_(0.05 * torch.randn_like(p))
        return model

    model = trained()
    waves = [load_audio(p) for p in example_clips]
    tokens = model.encode_recordings(waves)
    prompts = ["<audio>\nTranscribe."] * len(waves)

    def first_logits(llm):
        embeds, mask = llm.embed_prompts(prompts, tokens.embeddings, tokens.lengths)
        logits, _ = llm.prefill(embeds, mask)
        return logits.float()

    with torch.inference_mode():
        reference = first_logits(model.llm)
        spread = (reference - reference.mean()).abs().max()
        for options, tolerance in [(LLMSpeedups(merge_lora=True), 1e-4), (LLMSpeedups(merge_lora=True, dtype="bfloat16"), 0.1),
                                   (LLMSpeedups(int8=True), 0.1)]:  # fmt: skip
            fast = speed_up_llm(trained().llm, options)
            assert not fast.has_lora  # merged: the LoRA product is in the weights
            error = (first_logits(fast) - reference).abs().max()
            assert error <= tolerance * spread, (options, float(error), float(spread))
            if options.int8:
                assert not any(type(m) is torch.nn.Linear for m in fast.model.modules())  # every Linear quantized
    for text, expected in [("merge,bf16", LLMSpeedups(merge_lora=True, dtype="bfloat16")), ("none", LLMSpeedups()),
                           (" int8 ", LLMSpeedups(int8=True))]:  # fmt: skip
        assert LLMSpeedups.parse(text) == expected
    with pytest.raises(ValueError, match=r"unknown LLM speed-up\(s\) \['fp8'\]; expected some of merge, bf16, int8"):
        LLMSpeedups.parse("merge,fp8")
    with pytest.raises(ValueError, match=r"LLMSpeedups int8 quantizes float32 Linear layers"):
        LLMSpeedups.parse("int8,bf16")
