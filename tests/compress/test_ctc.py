"""CTC compressor (Speech-LLaMA §2.2) and its character vocabulary, on hand-worked examples."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from spokenlm.compress import (
    CharSpan,
    CharVocab,
    CTCCompressor,
    CTCCompressorConfig,
    build_compressor,
    load_compressor,
    save_compressor,
    with_compressor_config,
)
from spokenlm.encoders.base import EncoderOutput

# Alphabet "abc": ids 0 = blank "_", 1 = a, 2 = b, 3 = c.
ID = {"_": 0, "a": 1, "b": 2, "c": 3}
D = 6  # dims 0..3 pick the CTC label through the hand-set head; dims 4..5 are content


def hand_set(mode: str) -> CTCCompressor:
    """A compressor whose argmax at a frame is the label whose one-hot dim (0..3) is set."""
    compressor = CTCCompressor(CTCCompressorConfig(input_dim=D, mode=mode, alphabet="abc"))
    with torch.no_grad():
        compressor.head.weight.zero_()
        compressor.head.bias.zero_()
        compressor.head.weight[:, :4] = 10.0 * torch.eye(4)  # logit of label v = 10 * x[v]
    return compressor


def frames(path: str, pad_to: int | None = None, pad_label: str = "a") -> torch.Tensor:
    """(T, D) features for a label path like "_aa_ccc_"; content dims 4, 5 = (t, 10 t)."""
    path = path + pad_label * ((pad_to or len(path)) - len(path))
    x = torch.zeros(len(path), D)
    for t, label in enumerate(path):
        x[t, ID[label]] = 1.0
        x[t, 4:] = torch.tensor([t, 10.0 * t])
    return x


def encoded(*items: torch.Tensor, lengths: list[int] | None = None) -> EncoderOutput:
    feats = torch.nn.utils.rnn.pad_sequence(list(items), batch_first=True)
    lengths = lengths or [len(x) for x in items]
    return EncoderOutput(features=feats, lengths=torch.tensor(lengths), frame_rate_hz=50.0)


PATH = "_aa_ccc_"  # T = 8: blank, a, a, blank, c, c, c, blank


# ---------------------------------------------------------------------------------------- vocab


def test_vocab_ids_and_normalisation() -> None:
    vocab = CharVocab()
    assert vocab.size == 29  # blank + a-z + space + apostrophe
    assert vocab.encode("ab z'") == [1, 2, 27, 26, 28]
    assert vocab.normalize("  Well-known\tCAFÉ,  it's 7 ok!\n") == "wellknown cafe it's ok"
    assert vocab.decode(vocab.encode("Hello  World")) == "hello world"
    assert vocab.encode("?!-") == []


def test_vocab_ctc_decode_collapses_repeats_then_drops_blanks() -> None:
    vocab = CharVocab("abc")
    assert vocab.ctc_decode([0, 1, 1, 0, 1, 2, 2, 0]) == "aab"
    assert vocab.ctc_decode(torch.tensor([3, 3, 3])) == "c"
    assert vocab.decode([1, 0, 1]) == "aa"  # decode keeps repeats, skips blanks
    with pytest.raises(ValueError, match=r"^ids out of range \[0, 4\): \[4\]$"):
        vocab.decode([1, 4])


def test_vocab_json_round_trip_and_errors() -> None:
    vocab = CharVocab("xyz '")
    assert CharVocab.from_json(vocab.to_json()) == vocab
    assert json.loads(vocab.to_json()) == {"alphabet": "xyz '", "blank": 0}
    with pytest.raises(ValueError, match="^alphabet must not be empty$"):
        CharVocab("")
    with pytest.raises(ValueError, match="^alphabet has duplicate characters: 'ab'$"):
        CharVocab("abcab")
    with pytest.raises(ValueError, match="^alphabet must be lowercase, got 'aB'$"):
        CharVocab("aB")


# ------------------------------------------------------------------------------- compression


def test_blank_removal_by_hand() -> None:
    x = frames(PATH)
    out = hand_set("blank_removal")(encoded(x))
    assert out.lengths.tolist() == [5]
    assert out.spans == [[(1, 2), (2, 3), (4, 5), (5, 6), (6, 7)]]
    torch.testing.assert_close(out.embeddings[0], x[[1, 2, 4, 5, 6]])
    # 5 tokens over 8 frames at 50 Hz = 0.16 s
    torch.testing.assert_close(out.tokens_per_second, torch.tensor([5 / 0.16]))
    assert out.ctc_log_probs.shape == (1, 8, 4)
    assert out.span_seconds(0)[0] == (0.02, 0.04)


def test_frame_averaging_by_hand() -> None:
    x = frames(PATH)
    out = hand_set("frame_averaging")(encoded(x))
    assert out.lengths.tolist() == [2]
    assert out.spans == [[(1, 3), (4, 7)]]
    torch.testing.assert_close(out.embeddings[0], torch.stack([x[1:3].mean(0), x[4:7].mean(0)]))
    torch.testing.assert_close(out.embeddings[0, :, 4], torch.tensor([1.5, 5.0]))  # mean of t
    torch.testing.assert_close(out.tokens_per_second, torch.tensor([2 / 0.16]))


def test_repeated_character_needs_a_blank_between() -> None:
    # "aa_a": one run of a, a blank, another a -> two tokens, transcript "aa"
    out = hand_set("frame_averaging")(encoded(frames("aa_a")))
    assert out.spans == [[(0, 2), (3, 4)]]
    compressor = hand_set("frame_averaging")
    assert compressor.greedy_transcripts(out.ctc_log_probs, torch.tensor([4])) == ["aa"]


@pytest.mark.parametrize("mode", ["blank_removal", "frame_averaging"])
def test_all_blank_gives_one_mean_token(mode: str) -> None:
    x = frames("_____", pad_to=7)  # 5 valid blank frames, 2 padding frames labelled "a"
    out = hand_set(mode)(encoded(x, lengths=[5]))
    assert out.lengths.tolist() == [1]
    assert out.spans == [[(0, 5)]]
    torch.testing.assert_close(out.embeddings[0, 0], x[:5].mean(0))
    torch.testing.assert_close(out.tokens_per_second, torch.tensor([1 / 0.1]))


@pytest.mark.parametrize("mode", ["blank_removal", "frame_averaging"])
def test_padding_frames_never_contribute(mode: str) -> None:
    # item 1 is "_a_c" padded to 8 with frames whose argmax is "a" (non-blank)
    x0, x1 = frames(PATH), frames("_a_c", pad_to=8, pad_label="a")
    compressor = hand_set(mode)
    out = compressor(encoded(x0, x1, lengths=[8, 4]))
    assert out.lengths.tolist() == ([5, 2] if mode == "blank_removal" else [2, 2])
    assert out.spans[1] == [(1, 2), (3, 4)]
    torch.testing.assert_close(out.embeddings[1, :2], x1[[1, 3]])
    assert out.embeddings[1, 2:].abs().sum() == 0  # right-padded with zeros
    torch.testing.assert_close(out.tokens_per_second[1], torch.tensor(2 / 0.08))
    assert compressor.greedy_transcripts(out.ctc_log_probs, out.lengths.new_tensor([8, 4])) == ["ac", "ac"]


@pytest.mark.parametrize("mode", ["blank_removal", "frame_averaging"])
def test_batched_with_padding_equals_per_item(mode: str) -> None:
    torch.manual_seed(0)
    compressor = CTCCompressor(CTCCompressorConfig(input_dim=8, mode=mode, alphabet="abc"))
    items = [torch.randn(n, 8) for n in (11, 6, 3)]
    batched = compressor(encoded(*items))
    for i, x in enumerate(items):
        single = compressor(encoded(x))
        n = int(single.lengths[0])
        assert batched.lengths[i] == n
        assert batched.spans[i] == single.spans[0]
        torch.testing.assert_close(batched.embeddings[i, :n], single.embeddings[0])
        torch.testing.assert_close(batched.tokens_per_second[i], single.tokens_per_second[0])
        torch.testing.assert_close(batched.ctc_log_probs[i, : len(x)], single.ctc_log_probs[0])


def test_greedy_transcript_and_char_alignment_by_hand() -> None:
    compressor = hand_set("blank_removal")
    log_probs = compressor(encoded(frames(PATH))).ctc_log_probs
    assert compressor.greedy_transcripts(log_probs, torch.tensor([8])) == ["ac"]
    assert compressor.char_alignment(log_probs, torch.tensor([8])) == [[CharSpan("a", 1, 3), CharSpan("c", 4, 7)]]
    # all blank: empty transcript (the one-token fallback is for compression only)
    log_probs = compressor(encoded(frames("____"))).ctc_log_probs
    assert compressor.greedy_transcripts(log_probs, torch.tensor([4])) == [""]
    assert compressor.char_alignment(log_probs, torch.tensor([4])) == [[]]


def test_frame_averaging_tokens_are_transcript_characters() -> None:
    torch.manual_seed(1)
    compressor = CTCCompressor(CTCCompressorConfig(input_dim=8, mode="frame_averaging", alphabet="abc"))
    enc = encoded(torch.randn(20, 8), torch.randn(9, 8))
    out = compressor(enc)
    for item, chars in enumerate(compressor.char_alignment(out.ctc_log_probs, enc.lengths)):
        if chars:  # not the all-blank fallback
            assert out.spans[item] == [(c.start_frame, c.end_frame) for c in chars]


def test_bad_lengths_raise() -> None:
    with pytest.raises(ValueError, match=r"^item 1 has length 0; lengths must be in \[1, 4\]"):
        hand_set("blank_removal")(encoded(frames("_a_a"), frames("_a_a"), lengths=[4, 0]))


# ------------------------------------------------------------------------------------- loss


def test_ctc_loss_matches_hand_computation() -> None:
    # T = 2, target "a": paths "aa", "_a", "a_" -> loss = -log(pa pa + p_ pa + pa p_)
    compressor = CTCCompressor(CTCCompressorConfig(input_dim=D, alphabet="abc"))
    enc = encoded(torch.randn(2, D))
    p = compressor.ctc_log_probs(enc)[0].exp().detach()
    a, blank = ID["a"], ID["_"]
    expected = -math.log(p[0, a] * p[1, a] + p[0, blank] * p[1, a] + p[0, a] * p[1, blank])
    assert compressor.ctc_loss(enc, ["A!"]).item() == pytest.approx(expected, rel=1e-5)


def test_ctc_loss_is_a_batch_mean_of_utterance_losses() -> None:
    torch.manual_seed(0)
    compressor = CTCCompressor(CTCCompressorConfig(input_dim=8, alphabet="abc"))
    x0, x1 = torch.randn(10, 8), torch.randn(6, 8)
    both = compressor.ctc_loss(encoded(x0, x1), ["abc", "ca"])
    alone = (compressor.ctc_loss(encoded(x0), ["abc"]) + compressor.ctc_loss(encoded(x1), ["ca"])) / 2
    torch.testing.assert_close(both, alone)


def test_ctc_loss_is_finite_and_backpropagates() -> None:
    torch.manual_seed(0)
    compressor = CTCCompressor(CTCCompressorConfig(input_dim=8, alphabet="abc"))
    feats = torch.randn(2, 7, 8, requires_grad=True)
    enc = EncoderOutput(features=feats, lengths=torch.tensor([7, 5]), frame_rate_hz=50.0)
    loss = compressor.ctc_loss(enc, ["abba", "c"])
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(compressor.head.weight.grad).all() and compressor.head.weight.grad.abs().sum() > 0
    assert feats.grad[1, 5:].abs().sum() == 0  # padding frames get no gradient
    assert feats.grad[1, :5].abs().sum() > 0


def test_ctc_loss_bad_labels_raise_naming_the_item() -> None:
    compressor = CTCCompressor(CTCCompressorConfig(input_dim=D, alphabet="abc"))
    enc = encoded(torch.randn(4, D), torch.randn(4, D))
    with pytest.raises(ValueError, match=r"^text 1 has no characters in the CTC alphabet: '\?!'$"):
        compressor.ctc_loss(enc, ["ab", "?!"])
    with pytest.raises(
        ValueError,
        match=r"^text 0 needs at least 5 frames for CTC \(4 characters, 1 adjacent repeats\) but item 0 has 4: 'abba'$",
    ):
        compressor.ctc_loss(enc, ["abba", "c"])
    with pytest.raises(ValueError, match="^got 1 texts for a batch of 2$"):
        compressor.ctc_loss(enc, ["a"])


def test_training_the_head_learns_the_transcripts() -> None:
    torch.manual_seed(0)
    compressor = CTCCompressor(CTCCompressorConfig(input_dim=16, mode="frame_averaging", alphabet="abc"))
    enc = encoded(torch.randn(12, 16), torch.randn(9, 16))
    texts = ["abca", "cab"]
    optimizer = torch.optim.Adam(compressor.parameters(), lr=0.1)
    first = compressor.ctc_loss(enc, texts).item()
    for _ in range(40):
        optimizer.zero_grad()
        loss = compressor.ctc_loss(enc, texts)
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.2 * first
    out = compressor(enc)
    assert compressor.greedy_transcripts(out.ctc_log_probs, enc.lengths) == texts
    assert out.lengths.tolist() == [4, 3]  # frame averaging: one token per character


# ------------------------------------------------------------------------- config / save / load


def test_config_validation_messages() -> None:
    with pytest.raises(ValueError, match="^CTCCompressorConfig.input_dim must be a positive int, got 0$"):
        CTCCompressorConfig(input_dim=0).validate()
    with pytest.raises(
        ValueError,
        match="^CTCCompressorConfig.mode must be 'blank_removal' or 'frame_averaging', got 'average'$",
    ):
        CTCCompressorConfig(input_dim=4, mode="average").validate()  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="^alphabet has duplicate characters: 'a'$"):
        build_compressor(CTCCompressorConfig(input_dim=4, alphabet="aa"))
    with pytest.raises(TypeError):
        CTCCompressorConfig(4)  # type: ignore[misc]  # keyword-only


@pytest.mark.parametrize("mode", ["blank_removal", "frame_averaging"])
def test_save_load_round_trip(tmp_path, mode: str) -> None:
    torch.manual_seed(0)
    compressor = build_compressor(CTCCompressorConfig(input_dim=8, mode=mode, alphabet="ab c"))
    save_compressor(compressor, tmp_path / "compressor")
    assert json.loads((tmp_path / "compressor" / "compressor.json").read_text()) == {
        "kind": "ctc",
        "input_dim": 8,
        "mode": mode,
        "alphabet": "ab c",
        "num_layers": 0,
        "num_heads": 4,
        "ffn_dim": 0,
        "dropout": 0.1,
        "beam": None,  # the greedy transcript (test_beam.py: with a word LM)
    }
    loaded = load_compressor(tmp_path / "compressor")
    assert isinstance(loaded, CTCCompressor) and loaded.config == compressor.config
    enc = encoded(torch.randn(10, 8), torch.randn(4, 8))
    a, b = compressor(enc), loaded(enc)
    torch.testing.assert_close(a.embeddings, b.embeddings)
    torch.testing.assert_close(a.ctc_log_probs, b.ctc_log_probs)
    assert a.spans == b.spans


def test_load_rejects_unknown_kind_and_keys(tmp_path) -> None:
    save_compressor(build_compressor(CTCCompressorConfig(input_dim=4)), tmp_path)
    config = json.loads((tmp_path / "compressor.json").read_text())
    (tmp_path / "compressor.json").write_text(json.dumps({**config, "kind": "pca"}))
    with pytest.raises(ValueError, match=r"unknown compressor kind 'pca'; expected one of \['ctc', 'stack', 'syllable'\]$"):
        load_compressor(tmp_path)
    (tmp_path / "compressor.json").write_text(json.dumps({**config, "blank": 0}))
    with pytest.raises(ValueError, match=r"unknown ctc compressor config keys \['blank'\]$"):
        load_compressor(tmp_path)


# ------------------------------------------------------------------------------ context layers


def _with_context(mode: str = "frame_averaging") -> CTCCompressor:
    torch.manual_seed(0)
    config = CTCCompressorConfig(input_dim=8, mode=mode, num_layers=2, num_heads=2, ffn_dim=16, dropout=0.0)
    return build_compressor(config).eval()


def test_context_layers_batched_equals_single_and_pool_their_output() -> None:
    compressor = _with_context()
    torch.manual_seed(1)
    a, b = torch.randn(12, 8), torch.randn(7, 8)
    batch = encoded(a, b)
    with torch.no_grad():
        context = compressor.features(batch)
        out = compressor(batch)
        for i, x in enumerate((a, b)):
            single = compressor.features(encoded(x))
            torch.testing.assert_close(context[i, : len(x)], single[0], atol=1e-5, rtol=0)
    assert not torch.allclose(context[0], a)  # the layers change the features
    # token 0 is the mean of the context output over its span, not of the encoder features
    start, end = out.spans[0][0]
    torch.testing.assert_close(out.embeddings[0, 0], context[0, start:end].mean(0), atol=1e-5, rtol=0)


def test_context_layers_train_and_round_trip(tmp_path) -> None:
    compressor = _with_context()
    compressor.train()
    torch.manual_seed(2)
    batch = encoded(torch.randn(30, 8), torch.randn(25, 8))
    compressor.ctc_loss(batch, ["abc", "ba"]).backward()
    grads = [p.grad for p in compressor.context.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    save_compressor(compressor.eval(), tmp_path / "c")
    loaded = load_compressor(tmp_path / "c").eval()
    with torch.no_grad():
        assert torch.equal(loaded(batch).embeddings, compressor(batch).embeddings)


def test_context_layer_config_errors() -> None:
    with pytest.raises(ValueError, match=r"CTCCompressorConfig.input_dim 8 is not divisible by num_heads 3"):
        CTCCompressorConfig(input_dim=8, num_layers=1, num_heads=3).validate()
    with pytest.raises(ValueError, match=r"CTCCompressorConfig.num_layers must be an int >= 0, got -1"):
        CTCCompressorConfig(input_dim=8, num_layers=-1).validate()


# ------------------------------------------------------------------------------ config overrides


def test_overrides_switch_the_mode_and_keep_the_head() -> None:
    averaging = hand_set("frame_averaging")
    removal = with_compressor_config(averaging, {"mode": "blank_removal"})
    assert removal.config == dataclasses.replace(averaging.config, mode="blank_removal")
    assert all(torch.equal(a, b) for a, b in zip(averaging.state_dict().values(), removal.state_dict().values()))
    x = encoded(frames(PATH))
    # "_aa_ccc_": one token per run of a character (2) against one per emitting frame (5), the same transcript
    assert averaging(x).lengths.tolist() == [2] and removal(x).lengths.tolist() == [5]
    assert averaging(x).chars == removal(x).chars
    assert torch.equal(removal(x).embeddings, hand_set("blank_removal")(x).embeddings)
    assert with_compressor_config(averaging, {}) is averaging


def test_overrides_that_change_weights_or_name_no_field_are_refused() -> None:
    compressor = hand_set("frame_averaging")
    with pytest.raises(ValueError, match=r"^unknown compressor_overrides for CTCCompressorConfig: speed$"):
        with_compressor_config(compressor, {"speed": 2})
    with pytest.raises(ValueError, match=r"^compressor_overrides \(alphabet\) change the weights of ctc/: "):
        with_compressor_config(compressor, {"alphabet": "abcd"}, source="ctc/")
