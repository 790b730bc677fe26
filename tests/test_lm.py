"""spokenlm.lm: loading, the <audio> splice, KV-cached decoding parity, sampling, beam, LoRA, loss.

Tiny Llama and Qwen2 decoders (hidden 32, 2 layers) are built from configs, saved to temp dirs and
read back with ``load_llm``, the path a real checkpoint takes.
"""

import json
import re

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2Config

from spokenlm.adapter import AdapterConfig, build_adapter
from spokenlm.lm import (
    GenerationConfig,
    GenerationOutput,
    SpeechLLM,
    LoRAConfig,
    add_lora,
    build_llm,
    load_llm,
    load_lora,
    save_llm,
    save_lora,
)
from spokenlm.tokenizer import AUDIO_TOKEN, train_bpe_tokenizer

SENTENCES = [
    "the quick brown fox jumps over the lazy dog",
    "speech recognition turns audio into text",
    "a language model predicts the next token",
    "she sells sea shells by the sea shore",
    "the weather in paris is sunny today",
    "please transcribe the following recording",
    "named entities include people places and dates",
    "the meeting starts at nine in the morning",
] * 4

D = 32  # model_dim of the tiny LLMs
FAMILIES = ["llama", "qwen2"]

# Items of different prompt and speech lengths, so a batch is left-padded unevenly.
PROMPTS = [
    "transcribe: <audio> text:",
    "<audio>",
    "the speech <audio> says, in a few words, that the weather in paris is",
]
SPEECH_LENGTHS = torch.tensor([5, 2, 4])


def tiny_config(family: str, vocab_size: int):
    common = dict(
        hidden_size=D,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=vocab_size,
        max_position_embeddings=256,
        initializer_range=0.3,  # a peaked random LM: a frozen head can then express a target
    )
    return LlamaConfig(**common) if family == "llama" else Qwen2Config(**common)


@pytest.fixture(scope="module")
def tok():
    return train_bpe_tokenizer(SENTENCES, vocab_size=320)


@pytest.fixture(scope="module")
def llm_dirs(tok, tmp_path_factory):
    dirs = {}
    for seed, family in enumerate(FAMILIES):
        torch.manual_seed(seed)
        path = tmp_path_factory.mktemp(family)
        save_llm(build_llm(tiny_config(family, len(tok)), tok), path)
        dirs[family] = path
    return dirs


@pytest.fixture(scope="module")
def llms(llm_dirs):
    # float64, so that an argmax never flips on rounding noise between differently padded batches:
    # the decoding tests check positions, masks and the cache, not numerics.
    return {family: load_llm(path, dtype=torch.float64) for family, path in llm_dirs.items()}


@pytest.fixture
def speech():
    torch.manual_seed(1)
    return torch.randn(len(PROMPTS), int(SPEECH_LENGTHS.max()), D, dtype=torch.float64)  # (B, N, D)


def reference_greedy(llm: SpeechLLM, prompt: str, speech_rows, max_new_tokens: int) -> list[int]:
    """One item, no padding, no KV cache: the whole sequence is recomputed for every new token."""
    table = llm.model.get_input_embeddings()

    def embedding(ids: list[int]):
        return table(torch.tensor(ids, dtype=torch.long))  # (T, D); T may be 0

    ids = llm.tokenizer(prompt).input_ids  # the tokenizer's own post-processor adds <s>
    if speech_rows is None:
        seq = embedding(ids)
    else:
        k = ids.index(llm.tokenizer.convert_tokens_to_ids(AUDIO_TOKEN))
        seq = torch.cat([embedding(ids[:k]), speech_rows, embedding(ids[k + 1 :])])
    out = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            next_id = int(llm.model(inputs_embeds=seq[None]).logits[0, -1].argmax())
            if next_id in llm.eos_token_ids:
                break
            out.append(next_id)
            seq = torch.cat([seq, embedding([next_id])])
    return out


def logits_of(llm: SpeechLLM, speech) -> torch.Tensor:
    embeds, mask = llm.embed_prompts(PROMPTS, speech, SPEECH_LENGTHS)
    with torch.no_grad():
        return llm.model(inputs_embeds=embeds, attention_mask=mask).logits


# ---- loading --------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_load_llm_reads_a_saved_hf_dir(llm_dirs, tok, family):
    llm = load_llm(llm_dirs[family])
    assert llm.model.config.model_type == family
    assert llm.model_dim == D
    assert (llm_dirs[family] / "model.safetensors").is_file()
    assert llm.tokenizer.get_vocab() == tok.get_vocab()
    assert llm.audio_token_id == tok.convert_tokens_to_ids(AUDIO_TOKEN)
    assert llm.eos_token_ids[0] == tok.eos_token_id


def test_load_llm_refuses_pickled_weights(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"not unpickled")
    message = f"{tmp_path} holds only pickled weights (pytorch_model.bin); spokenlm never unpickles"
    with pytest.raises(ValueError, match=re.escape(message)):
        load_llm(tmp_path)


def test_load_llm_adds_audio_and_pad_to_a_foreign_tokenizer(tmp_path):
    # a checkpoint whose tokenizer knows neither <audio> nor a pad token (as many base LLMs)
    words = ["<unk>", "<s>", "</s>", "hello", "world"]
    raw = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    foreign = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    LlamaForCausalLM(tiny_config("llama", 5)).save_pretrained(tmp_path)
    foreign.save_pretrained(tmp_path)
    assert AUDIO_TOKEN not in foreign.get_vocab() and foreign.pad_token is None
    llm = load_llm(tmp_path)
    assert llm.tokenizer.convert_tokens_to_ids(AUDIO_TOKEN) == 5
    assert llm.tokenizer.pad_token == "</s>"  # eos serves as pad; it is never attended nor scored
    assert llm.model.get_input_embeddings().num_embeddings == 6
    assert llm.model.get_output_embeddings().out_features == 6


# ---- prompt assembly --------------------------------------------------------------------------------


def test_embed_prompts_splices_speech_at_the_marker_with_left_padding(llms, speech):
    llm = llms["llama"]
    embeds, mask = llm.embed_prompts(PROMPTS, speech, SPEECH_LENGTHS)
    table = llm.model.get_input_embeddings().weight
    lengths = []
    for i, prompt in enumerate(PROMPTS):
        ids = llm.tokenizer(prompt).input_ids
        k = ids.index(llm.audio_token_id)
        n = int(SPEECH_LENGTHS[i])
        length = len(ids) - 1 + n
        lengths.append(length)
        pad = embeds.shape[1] - length
        row = embeds[i, pad:]
        assert torch.equal(mask[i], torch.tensor([0] * pad + [1] * length))  # pads on the left
        assert torch.equal(embeds[i, :pad], torch.zeros(pad, D, dtype=embeds.dtype))
        assert torch.equal(row[:k], table[ids[:k]])
        assert torch.equal(row[k : k + n], speech[i, :n])  # exactly the valid speech rows, in order
        assert torch.equal(row[k + n :], table[ids[k + 1 :]])
    assert embeds.shape == (3, max(lengths), D)


@pytest.mark.parametrize(
    ("prompts", "message"),
    [
        (["no marker", "<audio>", "<audio>"], "prompt must contain exactly one <audio> marker, found 0: 'no marker'"),
        (["<audio> <audio>", "<audio>", "<audio>"], "prompt must contain exactly one <audio> marker, found 2"),
    ],
)
def test_marker_count_is_checked(llms, speech, prompts, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        llms["llama"].embed_prompts(prompts, speech, SPEECH_LENGTHS)


def test_marker_without_speech_is_refused(llms):
    message = "prompt has an <audio> marker but no speech was given: 'say <audio>'"
    with pytest.raises(ValueError, match=re.escape(message)):
        llms["llama"].generate(["say <audio>"])


# ---- decoding ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_greedy_equals_single_and_uncached_reference(llms, speech, family):
    llm = llms[family]
    config = GenerationConfig(max_new_tokens=10)
    refs = [reference_greedy(llm, p, speech[i, : SPEECH_LENGTHS[i]], 10) for i, p in enumerate(PROMPTS)]
    # Also make item 0 stop early, at a token it really produces, to check per-item stopping.
    stopper = SpeechLLM(model=llm.model, tokenizer=llm.tokenizer)
    stopper.eos_token_ids = llm.eos_token_ids + [refs[0][3]]
    for model in (llm, stopper):
        expected = [reference_greedy(model, p, speech[i, : SPEECH_LENGTHS[i]], 10) for i, p in enumerate(PROMPTS)]
        batched = model.generate(PROMPTS, speech, SPEECH_LENGTHS, config)
        single = [
            model.generate([p], speech[i : i + 1], SPEECH_LENGTHS[i : i + 1], config)[0] for i, p in enumerate(PROMPTS)
        ]
        assert [o.token_ids for o in batched] == expected
        assert [o.token_ids for o in single] == expected
    assert len(expected[0]) <= 3 and batched[0].finished  # the stopper did stop item 0
    assert [len(r) for r in refs] == [10, 10, 10]  # random weights never chose eos: full-length runs


def test_decode_step_of_k_tokens_equals_k_single_steps(llms, speech):
    # the verify half of speculative decoding: K draft tokens scored in one forward
    llm = llms["llama"]
    embeds, mask = llm.embed_prompts(PROMPTS, speech, SPEECH_LENGTHS)
    draft = torch.randint(5, len(llm.tokenizer), (3, 4))  # (B, K)
    with torch.no_grad():
        _, state = llm.prefill(embeds, mask)
        at_once, state_k = llm.decode_step(draft, state)  # (B, K, V)
        _, state = llm.prefill(embeds, mask)
        one_by_one = []
        for j in range(4):
            logits, state = llm.decode_step(draft[:, j : j + 1], state)
            one_by_one.append(logits[:, 0])
    torch.testing.assert_close(at_once, torch.stack(one_by_one, dim=1))
    assert torch.equal(state_k.next_positions, state.next_positions)
    assert torch.equal(state_k.next_positions, mask.sum(1) + 4)


@pytest.mark.parametrize("family", FAMILIES)
def test_text_only_prompts_decode_like_the_reference(llms, family):
    llm = llms[family]
    prompts = ["the quick brown fox", "a language model predicts the next token and"]
    outputs = llm.generate(prompts, config=GenerationConfig(max_new_tokens=6))
    assert [o.token_ids for o in outputs] == [reference_greedy(llm, p, None, 6) for p in prompts]
    assert all(isinstance(o.text, str) and AUDIO_TOKEN not in o.text for o in outputs)


def test_beam_of_one_equals_greedy_and_beams_give_text(llms, speech):
    llm = llms["qwen2"]

    def beam(n: int) -> GenerationConfig:
        return GenerationConfig(strategy="beam", num_beams=n, max_new_tokens=8)

    greedy = llm.generate(PROMPTS, speech, SPEECH_LENGTHS, GenerationConfig(max_new_tokens=8))
    beam1 = llm.generate(PROMPTS, speech, SPEECH_LENGTHS, beam(1))
    assert beam1 == greedy
    beam3 = llm.generate(PROMPTS, speech, SPEECH_LENGTHS, beam(3))
    assert len(beam3) == 3
    for out in beam3:
        assert isinstance(out, GenerationOutput) and isinstance(out.text, str)
        assert 1 <= len(out.token_ids) <= 8
        assert out.text == llm.tokenizer.decode(out.token_ids, skip_special_tokens=True)


def test_seeded_sampling_is_reproducible_and_top_k_1_is_greedy(llms, speech):
    llm = llms["llama"]
    sample = GenerationConfig(strategy="sample", max_new_tokens=8, seed=7, top_p=0.95)
    first = llm.generate(PROMPTS, speech, SPEECH_LENGTHS, sample)
    assert llm.generate(PROMPTS, speech, SPEECH_LENGTHS, sample) == first
    other = GenerationConfig(strategy="sample", max_new_tokens=8, seed=8, top_p=0.95)
    assert llm.generate(PROMPTS, speech, SPEECH_LENGTHS, other) != first
    greedy = llm.generate(PROMPTS, speech, SPEECH_LENGTHS, GenerationConfig(max_new_tokens=8))
    for config in (
        GenerationConfig(strategy="sample", max_new_tokens=8, seed=3, top_k=1),
        GenerationConfig(strategy="sample", max_new_tokens=8, seed=3, temperature=1e-4),
        GenerationConfig(strategy="sample", max_new_tokens=8, seed=3, top_p=1e-6),
    ):
        assert llm.generate(PROMPTS, speech, SPEECH_LENGTHS, config) == greedy


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_new_tokens": -1}, "max_new_tokens must be >= 1, got -1"),
        ({"strategy": "sample", "temperature": 0.0}, "temperature must be > 0 for sampling, got 0.0"),
        ({"strategy": "sample", "temperature": -1.0}, "temperature must be > 0 for sampling, got -1.0"),
        ({"strategy": "beam", "num_beams": 0}, "num_beams must be >= 1, got 0"),
        ({"top_p": 0.0}, "top_p must be in (0, 1], got 0.0"),
        ({"top_p": 1.5}, "top_p must be in (0, 1], got 1.5"),
        ({"top_k": -2}, "top_k must be >= 0 (0 disables it), got -2"),
        ({"strategy": "nucleus"}, "strategy must be one of ('greedy', 'beam', 'sample'), got 'nucleus'"),
    ],
)
def test_generation_config_validate_rejects_absurd_values(kwargs, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        GenerationConfig(**kwargs).validate()


# ---- loss and LoRA ----------------------------------------------------------------------------------


def test_batched_loss_is_the_token_mean_of_single_losses(llms, speech):
    # right padding, prompt and speech positions carry no loss: batching must not change the sum
    llm = llms["qwen2"]
    targets = ["hello world", "the lazy dog jumps", "sunny"]
    batched = llm.loss(PROMPTS, speech, SPEECH_LENGTHS, targets)
    counts = [len(llm.tokenizer(t, add_special_tokens=False).input_ids) + 1 for t in targets]  # + eos
    singles = [
        llm.loss([p], speech[i : i + 1], SPEECH_LENGTHS[i : i + 1], [targets[i]]) * counts[i]
        for i, p in enumerate(PROMPTS)
    ]
    torch.testing.assert_close(batched, sum(singles) / sum(counts))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("with_lora", [False, True])
def test_loss_equals_cross_entropy_over_the_full_logits(llm_dirs, speech, family, with_lora):
    # the loss projects only target positions onto the vocabulary; the reference scores every
    # position of the model's own forward (logits of the whole sequence) and ignores the rest
    torch.manual_seed(0)
    llm = load_llm(llm_dirs[family])
    if with_lora:
        llm = add_lora(llm, LoRAConfig(rank=4, alpha=8))
        for name, p in llm.named_parameters():
            if "lora_B" in name:  # peft starts B at zero: give LoRA a real effect on the logits
                torch.nn.init.normal_(p, std=0.5)
    targets = ["hello world", "the lazy dog jumps", "sunny"]
    batch = llm._assemble(PROMPTS, speech, SPEECH_LENGTHS, targets, padding_side="right")
    logits = llm.model(
        inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask,
        position_ids=(batch.attention_mask.cumsum(1) - 1).clamp(min=0),
    ).logits  # fmt: skip
    reference = torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), batch.labels[:, 1:].flatten(), ignore_index=-100
    )
    torch.testing.assert_close(llm.loss(PROMPTS, speech, SPEECH_LENGTHS, targets), reference)


def test_lora_trains_only_adapter_and_lora(llm_dirs, tok):
    torch.manual_seed(0)
    llm = add_lora(load_llm(llm_dirs["llama"]), LoRAConfig(rank=4, alpha=8))
    assert llm.has_lora
    adapter = build_adapter(AdapterConfig(input_dim=12, output_dim=D, hidden_dim=16))
    speech = adapter(torch.randn(3, 5, 12))
    llm.loss(PROMPTS, speech, SPEECH_LENGTHS, ["hello", "world", "fox"]).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in adapter.parameters())
    lora = [(n, p) for n, p in llm.named_parameters() if "lora_" in n]
    assert len(lora) == 2 * 2 * 2  # 2 layers x (q_proj, v_proj) x (A, B)
    assert all(p.requires_grad and p.grad is not None for _, p in lora)
    base = [(n, p) for n, p in llm.named_parameters() if "lora_" not in n]
    assert base and all(not p.requires_grad and p.grad is None for _, p in base)


def test_lora_save_load_round_trip_gives_identical_logits(llm_dirs, tmp_path):
    torch.manual_seed(0)
    llm = add_lora(load_llm(llm_dirs["qwen2"]))
    with torch.no_grad():  # fresh LoRA B is zero; make the adapter matter before saving it
        for name, p in llm.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)
    speech = torch.randn(3, 5, D)
    save_llm(llm, tmp_path / "llm")  # the base, without LoRA
    save_lora(llm, tmp_path / "lora")
    assert (tmp_path / "lora" / "adapter_model.safetensors").is_file()
    base = load_llm(tmp_path / "llm")
    assert not any("lora_" in n for n in base.state_dict())
    base_logits = logits_of(base, speech)
    again = load_lora(base, tmp_path / "lora")
    assert torch.equal(logits_of(again, speech), logits_of(llm, speech))
    assert not torch.allclose(logits_of(again, speech), base_logits)
    config = GenerationConfig(max_new_tokens=5)
    expected = llm.generate(PROMPTS, speech, SPEECH_LENGTHS, config)
    assert again.generate(PROMPTS, speech, SPEECH_LENGTHS, config) == expected


def test_load_lora_refuses_pickled_adapter_weights(llm_dirs, tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")
    (tmp_path / "adapter_model.bin").write_bytes(b"not unpickled")
    message = f"{tmp_path} has no adapter_model.safetensors; spokenlm never unpickles adapter weights"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        load_lora(load_llm(llm_dirs["llama"]), tmp_path)


def test_adapter_and_lora_learn_a_tiny_batch(llm_dirs):
    torch.manual_seed(0)
    llm = add_lora(load_llm(llm_dirs["llama"]), LoRAConfig(rank=8, alpha=16))
    adapter = build_adapter(AdapterConfig(input_dim=12, output_dim=D, hidden_dim=64))
    feats = torch.randn(3, 5, 12)  # (B, N, D_enc) fixed batch
    targets = ["hello world", "the lazy dog", "sunny today"]
    params = list(adapter.parameters()) + [p for p in llm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    losses = []
    for _ in range(30):
        loss = llm.loss(PROMPTS, adapter(feats), SPEECH_LENGTHS, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
