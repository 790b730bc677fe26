"""spokenlm.tokenizer: the byte-level BPE, its special tokens, and save/reload identity."""

import re

import pytest
from transformers import AutoTokenizer

from spokenlm.tokenizer import AUDIO_TOKEN, SPECIAL_TOKENS, train_bpe_tokenizer

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


@pytest.fixture(scope="module")
def tok():
    return train_bpe_tokenizer(SENTENCES, vocab_size=320)


def test_special_tokens_have_fixed_ids(tok):
    assert [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert (tok.pad_token, tok.bos_token, tok.eos_token, tok.unk_token) == ("<pad>", "<s>", "</s>", "<unk>")
    assert AUDIO_TOKEN in tok.additional_special_tokens
    assert 256 + len(SPECIAL_TOKENS) < len(tok) <= 320  # bytes + specials + some merges


def test_audio_marker_is_one_token_and_bos_is_prepended(tok):
    ids = tok("transcribe: <audio> text:").input_ids
    assert ids[0] == tok.bos_token_id
    assert ids.count(tok.convert_tokens_to_ids(AUDIO_TOKEN)) == 1
    assert tok("x <audio>", add_special_tokens=False).input_ids[-1] == tok.convert_tokens_to_ids(AUDIO_TOKEN)


@pytest.mark.parametrize("text", ["the quick brown fox", "Zürich, 1999 — naïve café!", "  two  spaces\n"])
def test_decode_inverts_encode_byte_for_byte(tok, text):
    # byte-level: unseen characters are bytes, never <unk>
    ids = tok(text, add_special_tokens=False).input_ids
    assert tok.unk_token_id not in ids
    assert tok.decode(ids) == text


def test_save_pretrained_reloads_identically(tmp_path):
    tok = train_bpe_tokenizer(SENTENCES, vocab_size=300, out_dir=tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again.get_vocab() == tok.get_vocab()
    assert again.all_special_tokens == tok.all_special_tokens
    for text in ["the lazy dog <audio> sells shells", "unseen wörds"]:
        assert again(text).input_ids == tok(text).input_ids
        assert again.decode(again(text).input_ids, skip_special_tokens=True) == tok.decode(
            tok(text).input_ids, skip_special_tokens=True
        )


def test_too_small_vocab_is_refused():
    with pytest.raises(ValueError, match=re.escape("vocab_size must be >= 261 (256 bytes + special tokens), got 100")):
        train_bpe_tokenizer(SENTENCES, vocab_size=100)
