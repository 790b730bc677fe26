"""spokenlm.lm with GGUF files: de-quantized once into a cached bf16 HF dir, and chat-template prompts.

A tiny Llama (hidden 64, 2 layers) with a byte-level BPE vocabulary and a ChatML template is written
with gguf's own ``GGUFWriter``, its matrices quantized to Q8_0 the way llama.cpp stores them (Q and K
rows permuted for its rotary layout); the reference is a ``LlamaForCausalLM`` holding the same
de-quantized weights.
"""

import json
import re

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType
from safetensors import safe_open
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from spokenlm.lm import GenerationConfig, IGNORE_INDEX, build_llm, gguf_to_hf_dir, load_llm
from spokenlm.tokenizer import AUDIO_TOKEN, train_bpe_tokenizer

SENTENCES = [
    "the quick brown fox jumps over the lazy dog",
    "speech recognition turns audio into text",
    "a language model predicts the next token",
    "transcribe the speech please",
] * 8
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2 as in SmolLM2
CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
HEADS, KV_HEADS = 4, 2


def _bpe() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(SENTENCES, trainer)
    return tok


def _llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    # llama.cpp's convert_hf_to_gguf.py: Q / K rows interleaved for its rotary layout
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _quantized(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(Q8_0 bytes, what they de-quantize to)."""
    q = gguf.quants.quantize(w, GGMLQuantizationType.Q8_0)
    return q, gguf.quants.dequantize(q, GGMLQuantizationType.Q8_0)


def write_tiny_gguf(path, *, architecture: str = "llama") -> tuple[LlamaForCausalLM, Tokenizer]:
    """A tiny Llama GGUF file; returns the reference model (the de-quantized weights) and tokenizer."""
    bpe = _bpe()
    vocab = bpe.get_vocab()
    tokens = sorted(vocab, key=vocab.get)
    merges = json.loads(bpe.to_str())["model"]["merges"]
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokens), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=128, rms_norm_eps=1e-5,
        rope_theta=10000.0, tie_word_embeddings=False, initializer_range=0.2,
    )  # fmt: skip
    reference = LlamaForCausalLM(config).eval()
    hf = {k: v.numpy() for k, v in reference.state_dict().items()}

    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_name("tiny")
    writer.add_context_length(128)
    writer.add_embedding_length(64)
    writer.add_block_count(2)
    writer.add_feed_forward_length(128)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(64 // HEADS)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in SPECIALS else 1 for t in tokens])  # 3: control
    writer.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in merges])
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(2)
    writer.add_chat_template(CHATML)

    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}  # fmt: skip
    layer = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}  # fmt: skip
    for i in range(2):
        names |= {f"model.layers.{i}.{k}.weight": f"blk.{i}.{v}.weight" for k, v in layer.items()}
    dequantized = {}
    for hf_name, gguf_name in names.items():
        w = hf[hf_name]
        if w.ndim == 1:  # norms stay float32
            writer.add_tensor(gguf_name, w)
            dequantized[hf_name] = w
            continue
        if gguf_name.endswith(("attn_q.weight", "attn_k.weight")):
            w = _llama_cpp_permute(w, HEADS if "attn_q" in gguf_name else KV_HEADS)
        writer.add_tensor(gguf_name, _quantized(w)[0], raw_dtype=GGMLQuantizationType.Q8_0)
        # Q8_0 scales blocks of 32 within a row, so the row permutation commutes with the round trip
        dequantized[hf_name] = _quantized(hf[hf_name])[1]
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    reference.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in dequantized.items()})
    return reference, bpe


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPOKENLM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.Q8_0.gguf"
    reference, bpe = write_tiny_gguf(path)
    return path, reference, bpe


def _bf16(model: LlamaForCausalLM) -> LlamaForCausalLM:
    """The reference as the cache stores it: weights rounded to bf16, computed in float32."""
    rounded = LlamaForCausalLM(model.config).eval()
    rounded.load_state_dict({k: v.bfloat16().float() for k, v in model.state_dict().items()})
    return rounded


def test_load_llm_reads_a_gguf_file_like_the_same_weights_loaded_directly(tiny_gguf, cache):
    path, reference, bpe = tiny_gguf
    llm = load_llm(path).eval()

    text = "the quick brown fox transcribe"
    ids = llm.tokenizer(text, add_special_tokens=False).input_ids
    assert ids == bpe.encode(text).ids  # the vocabulary and merges came through
    assert llm.tokenizer.chat_template == CHATML
    assert (llm.tokenizer.bos_token, llm.tokenizer.eos_token) == ("<|im_start|>", "<|im_end|>")  # the file's ids
    assert llm.eos_token_ids == [2] and llm.end_of_turn_id == 2

    batch = torch.tensor([ids])
    with torch.no_grad():
        got = llm.model(batch).logits[..., : len(bpe.get_vocab())]  # the last row is the added <audio>
        want = _bf16(reference)(batch).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)

    (cached,) = (cache / "gguf").iterdir()
    with safe_open(str(cached / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}


def test_a_second_load_reads_the_cached_directory_without_dequantizing(tiny_gguf, cache, monkeypatch):
    path, _, _ = tiny_gguf
    first = load_llm(path).eval()
    loaded_from = []
    original = AutoModelForCausalLM.from_pretrained.__func__

    def recording(cls, *args, **kwargs):
        loaded_from.append(kwargs.get("gguf_file"))
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(recording))
    second = load_llm(path).eval()
    assert loaded_from == [None]  # one load, of the cached safetensors dir
    assert gguf_to_hf_dir(path) == next((cache / "gguf").iterdir())
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        torch.testing.assert_close(first.model(ids).logits, second.model(ids).logits, rtol=0, atol=0)


def test_a_chat_template_makes_the_prompt_a_user_turn_and_the_target_its_reply(tiny_gguf, cache):
    path, _, _ = tiny_gguf
    llm = load_llm(path).eval()
    tok = llm.tokenizer
    prompt = f"transcribe: {AUDIO_TOKEN}"
    ids = llm.prompt_ids(prompt)
    assert tok.decode(ids) == f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
    assert ids.count(llm.audio_token_id) == 1  # the marker survives the template as one token

    # generation: the prompt embeddings are those ids, speech in place of the marker
    speech = torch.randn(1, 3, llm.model_dim)
    embeds, mask = llm.embed_prompts([prompt], speech, torch.tensor([3]))
    assert embeds.shape[1] == len(ids) - 1 + 3 and mask.all()
    k = ids.index(llm.audio_token_id)
    table = llm.model.get_input_embeddings().weight
    torch.testing.assert_close(embeds[0, :k], table[ids[:k]])
    torch.testing.assert_close(embeds[0, k : k + 3], speech[0])

    # training: the loss covers the reply and the template's end of turn, as in a rendered conversation
    target = "the lazy dog"
    conversation = tok.apply_chat_template(
        [{"role": "user", "content": "transcribe: "}, {"role": "assistant", "content": target}], tokenize=False
    )
    full = tok(conversation, add_special_tokens=False).input_ids[:-1]  # drop the "\n" after <|im_end|>
    reply = len(tok(target, add_special_tokens=False).input_ids) + 1
    assert full[-1] == llm.end_of_turn_id
    with torch.no_grad():
        logits = llm.model(torch.tensor([full])).logits[0, :-1]
        labels = torch.tensor(full[1:])
        labels[: len(full) - 1 - reply] = IGNORE_INDEX
        want = torch.nn.functional.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)
        got = llm.loss(["transcribe: "], None, None, [target])
    torch.testing.assert_close(got, want)

    (out,) = llm.generate(["transcribe: "], config=GenerationConfig(max_new_tokens=4))
    assert len(out.token_ids) <= 4 and llm.end_of_turn_id not in out.token_ids


def test_a_template_that_repeats_the_prompt_is_refused():
    tok = train_bpe_tokenizer(SENTENCES, vocab_size=300)
    tok.chat_template = "{% for m in messages %}{{ m['content'] }} {{ m['content'] }}</s>{% endfor %}"
    config = {"model_type": "llama", "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
              "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": len(tok)}  # fmt: skip
    llm = build_llm(config, tok)
    assert llm.end_of_turn_id == tok.convert_tokens_to_ids("</s>")
    message = "the chat template turned 1 <audio> marker(s) into 2 <audio> token(s): 'hi <audio> hi <audio></s>'"
    with pytest.raises(ValueError, match=re.escape(message)):
        llm.prompt_ids(f"hi {AUDIO_TOKEN}")


def test_a_file_that_is_no_usable_gguf_gives_a_clear_error(tiny_gguf, tmp_path, cache):
    text = tmp_path / "notes.gguf"
    text.write_text("just some text")
    message = f"{text} is neither a Hugging Face model directory nor a GGUF file (it starts with b'just', not b'GGUF')"
    with pytest.raises(ValueError, match=re.escape(message)):
        load_llm(text)

    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(tiny_gguf[0].read_bytes()[:2000])
    with pytest.raises(ValueError, match=re.escape(f"{truncated} is not a readable GGUF file: ")):
        load_llm(truncated)

    bert = tmp_path / "bert.gguf"
    writer = gguf.GGUFWriter(str(bert), "bert")
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    message = f"{bert}: GGUF architecture 'bert' is not a causal LM that transformers can de-quantize; supported: "
    with pytest.raises(ValueError, match=re.escape(message)) as e:
        load_llm(bert)
    assert "llama" in str(e.value) and "qwen2" in str(e.value)
    assert not (cache / "gguf").exists() or not any((cache / "gguf").iterdir())  # nothing half-written
