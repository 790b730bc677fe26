"""spokenlm.ngram: interpolated Kneser-Ney, checked by hand, by normalization and against KenLM."""

from __future__ import annotations

import math

import pytest

from spokenlm.ngram import BOS, EOS, UNK, fit_ngram

CORPUS = ["a b c", "a b d", "b c a", "c a b d", "d d a b"]


def _sum_over_vocab(lm, history):
    words = [w for w in lm.vocabulary if w != BOS]
    return sum(10 ** lm.log10_prob(w, history) for w in words)


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_every_history_gives_a_distribution(order):
    lm = fit_ngram(CORPUS, order)
    for history in [(), (BOS,), ("a",), ("a", "b"), ("b", "c"), ("x", "y"), (BOS, "d"), ("d", "d", "a")]:
        assert _sum_over_vocab(lm, history) == pytest.approx(1.0, abs=1e-9), history


@pytest.mark.parametrize("order", [2, 3])
def test_pruning_the_top_order_keeps_every_history_a_distribution(order, tmp_path):
    from flashlight.lib.text.decoder.kenlm import KenLM
    from flashlight.lib.text.dictionary import Dictionary

    corpus = CORPUS * 2 + ["b a d c", "c c b", "a b c d"]
    full, pruned = fit_ngram(corpus, order), fit_ngram(corpus, order, min_top_count=2)
    top = order
    assert set(pruned.logprobs[top]) < set(full.logprobs[top])  # the singletons are gone ...
    for gram, logprob in pruned.logprobs[top].items():  # ... the rest keep their interpolated probability
        assert logprob == pytest.approx(full.logprobs[top][gram])
    for k in range(1, top):
        assert pruned.logprobs[k] == full.logprobs[k]
    for history in [(BOS,), ("a",), ("b",), ("d",), ("a", "b"), ("b", "a"), ("c", "c"), (BOS, "b"), ("x", "y")]:
        assert _sum_over_vocab(pruned, history) == pytest.approx(1.0, abs=1e-9), history
    # KenLM reads the pruned file as the model scores
    path = pruned.write_arpa(tmp_path / "pruned.arpa")
    words = sorted(pruned.vocabulary)
    dictionary = Dictionary(words)
    kenlm = KenLM(str(path), dictionary)
    for sentence in ["b a d c", "c c b", "d a b"]:
        state, history = kenlm.start(0), (BOS,)
        for word in [*sentence.split(), EOS]:
            state, score = kenlm.score(state, dictionary.get_index(word))
            assert score == pytest.approx(pruned.log10_prob(word, history), abs=1e-5), (sentence, word)
            history = (*history, word)
    with pytest.raises(ValueError, match=r"^min_top_count must be an int >= 1, got 0$"):
        fit_ngram(corpus, order, min_top_count=0)


def test_bigram_values_by_hand():
    # two sentences "a b", "a c": bigram counts <s>a:2 ab:1 ac:1 b</s>:1 c</s>:1
    lm = fit_ngram(["a b", "a c"], 2)
    # unigram continuation counts: a 1 (<s>), b 1, c 1, </s> 2 (after b and c); total 5, 3 with count 1 and
    # 1 with count 2 -> D1 = 3 / (3 + 2) = 0.6; 5 words with <unk>: uniform 1/5
    d1, total, types = 0.6, 5, 4
    p_uni = {w: (c - d1) / total + d1 * types / total / 5 for w, c in {"a": 1, "b": 1, "c": 1, EOS: 2}.items()}
    assert lm.log10_prob("b", ()) == pytest.approx(math.log10(p_uni["b"]))
    assert lm.log10_prob(UNK, ()) == pytest.approx(math.log10(d1 * types / total / 5))
    # bigram counts: <s>a 2, ab 1, ac 1, b</s> 1, c</s> 1 -> n1 = 4, n2 = 1, D2 = 4 / 6
    d2 = 4 / 6
    p_ab = (1 - d2) / 2 + d2 * 2 / 2 * p_uni["b"]
    assert lm.log10_prob("b", ("a",)) == pytest.approx(math.log10(p_ab))
    assert lm.backoffs[1][("a",)] == pytest.approx(math.log10(d2 * 2 / 2))
    # unseen after "a": the backoff weight times the unigram
    assert lm.log10_prob(EOS, ("a",)) == pytest.approx(math.log10(d2) + math.log10(p_uni[EOS]))


def test_unknown_words_score_as_unk():
    lm = fit_ngram(CORPUS, 3)
    assert lm.log10_prob("zebra", ("a", "b")) == lm.log10_prob(UNK, ("a", "b"))
    assert lm.log10_prob("zebra", ("a", "b")) < lm.log10_prob("d", ("a", "b"))


def test_arpa_file_scores_as_kenlm_reads_it(tmp_path):
    from flashlight.lib.text.decoder.kenlm import KenLM
    from flashlight.lib.text.dictionary import Dictionary

    lm = fit_ngram(CORPUS * 3 + ["b a d c", "c c b"], 3)
    path = lm.write_arpa(tmp_path / "lm.arpa")
    text = path.read_text()
    assert text.startswith("\n\\data\\\nngram 1=") and text.rstrip().endswith("\\end\\")
    words = sorted(lm.vocabulary)
    dictionary = Dictionary(words)
    kenlm = KenLM(str(path), dictionary)
    for sentence in ["a b c", "d c b a", "a zebra b", "b b b b"]:
        state, history = kenlm.start(0), (BOS,)
        for word in [*sentence.split(), EOS]:
            state, score = kenlm.score(state, dictionary.get_index(word if word in words else UNK))
            assert score == pytest.approx(lm.log10_prob(word, history), abs=1e-5), (sentence, word)
            history = (*history, word)


@pytest.mark.parametrize(
    "sentences, order, error, message",
    [
        (CORPUS, 0, ValueError, r"order must be an int in \[1, 6\], got 0"),
        (CORPUS, 7, ValueError, r"order must be an int in \[1, 6\], got 7"),
        ([], 3, ValueError, "no sentence with words to estimate an n-gram model from"),
        (["", "   "], 3, ValueError, "no sentence with words"),
        (["a <s> b"], 3, ValueError, r"a sentence contains a reserved token \(<s>, </s>, <unk>\): 'a <s> b'"),
        ([b"a b"], 3, TypeError, "sentences must be strings, got bytes"),
    ],
)
def test_bad_input_is_named(sentences, order, error, message):
    with pytest.raises(error, match=message):
        fit_ngram(sentences, order)
