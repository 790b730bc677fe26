"""Word n-gram language models with interpolated Kneser-Ney smoothing, written as ARPA files.

The CTC beam search (``spokenlm.compress.beam``) scores words with KenLM, which flashlight-text
bundles and which reads ARPA text files. KenLM's estimator (``lmplz``) is a C++ program that PyPI
does not ship, and the Python LMs that are there (nltk.lm) neither write ARPA nor run fast enough
for a beam search, so the estimate is written here: a few seconds for a corpus of 10^5 sentences.

Interpolated Kneser-Ney (Chen & Goodman, 1998, §3.5, one discount per order):

    p(w | h) = max(c(h w) - D, 0) / c(h .) + D * N1+(h .) / c(h .) * p(w | h')

where h' drops h's first word, c is the raw count at the highest order and the continuation count
N1+(. g) (distinct left neighbours) below it (raw again for n-grams that start with <s>, which has no
left neighbour), and D = n1 / (n1 + 2 n2) from the count-of-counts of that order. The unigrams
interpolate with the uniform distribution over the vocabulary plus <unk>. In ARPA form an interpolated
model is exact: a seen n-gram stores its interpolated probability, and a context stores
D * N1+(h .) / c(h .) as its backoff weight, which is what an unseen word after h gets.

`min_top_count` prunes the highest order: n-grams seen fewer times are left out after estimation
(the discounts and lower orders are those of the whole model) and each context's backoff weight is
renormalized so its distribution still sums to one, (1 - sum of its kept p(w | h)) / (1 - sum of
their p(w | h')), as count cutoffs are applied to backoff models (SRILM's -gtNmin). Singletons are
most of the top order's n-grams (on the ~118k sentences of the shared English text, 80 % of the
trigrams), so pruning them takes an ARPA file to a fraction of its size.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
MAX_ORDER = 6
NEVER = -99.0  # ARPA's log10 probability of <s>, which is never predicted


@dataclass(frozen=True)
class NGramLM:
    """An estimated model: ``logprobs[k]`` maps each k-gram to its log10 probability, ``backoffs[k]``
    each k-gram that is a context of a (k+1)-gram to its log10 backoff weight."""

    order: int
    logprobs: list[dict[tuple[str, ...], float]]  # index 0 unused
    backoffs: list[dict[tuple[str, ...], float]]

    @property
    def vocabulary(self) -> set[str]:
        """The words the model has unigrams for, <s>, </s> and <unk> included."""
        return {g[0] for g in self.logprobs[1]}

    def log10_prob(self, word: str, history: tuple[str, ...]) -> float:
        """log10 p(word | history), backing off as ARPA readers do (the parity the tests check)."""
        word = word if (word,) in self.logprobs[1] else UNK
        history = tuple(history)[-(self.order - 1) :] if self.order > 1 else ()
        penalty = 0.0
        while True:
            gram = (*history, word)
            if gram in self.logprobs[len(gram)]:
                return penalty + self.logprobs[len(gram)][gram]
            penalty += self.backoffs[len(history)].get(history, 0.0) if history else 0.0
            history = history[1:]

    def write_arpa(self, path: str | Path) -> Path:
        """The model as an ARPA text file (KenLM, SRILM and flashlight read it)."""
        path = Path(path)
        lines = ["", "\\data\\"]
        lines += [f"ngram {k}={len(self.logprobs[k])}" for k in range(1, self.order + 1)]
        for k in range(1, self.order + 1):
            lines += ["", f"\\{k}-grams:"]
            for gram in sorted(self.logprobs[k]):
                text = f"{self.logprobs[k][gram]:.6f}\t{' '.join(gram)}"
                if k < self.order and gram in self.backoffs[k]:
                    text += f"\t{self.backoffs[k][gram]:.6f}"
                lines.append(text)
        lines += ["", "\\end\\", ""]
        path.write_text("\n".join(lines), encoding="utf-8")
        return path


def _discount(counts: Iterable[int]) -> float:
    histogram = Counter(c for c in counts if c <= 2)
    n1, n2 = histogram[1], histogram[2]
    if n1 == 0 or n2 == 0:
        return 0.5  # too little data for count-of-counts: a middle value
    return n1 / (n1 + 2 * n2)


def _pruned(probs: dict, counts: Counter, min_count: int, lower: dict, backoffs: dict) -> dict:
    """The top order's `probs` without the n-grams seen fewer than `min_count` times (`counts`), each
    context's backoff weight (log10, in `backoffs`, updated) renormalized over what is kept."""
    kept = {g: p for g, p in probs.items() if counts[g] >= min_count}
    mass: dict[tuple[str, ...], float] = defaultdict(float)  # sum of kept p(w | h) per context
    base: dict[tuple[str, ...], float] = defaultdict(float)  # ... and of their p(w | h')
    for gram, p in kept.items():
        mass[gram[:-1]] += p
        base[gram[:-1]] += lower[gram[1:]]
    for history in backoffs:
        if history in mass:
            backoffs[history] = math.log10(max(1.0 - mass[history], 1e-12) / max(1.0 - base[history], 1e-12))
        else:  # nothing after h is kept: every word backs off whole, p(w | h) = p(w | h')
            backoffs[history] = 0.0
    return kept


def fit_ngram(sentences: Iterable[str], order: int = 3, *, min_top_count: int = 1) -> NGramLM:
    """Estimate an interpolated Kneser-Ney model of ``order`` from whitespace-tokenized sentences
    (already normalized as the recognizer writes: the caller decides case and punctuation); the
    highest order's n-grams seen fewer than `min_top_count` times pruned (module docstring)."""
    if not isinstance(order, int) or not 1 <= order <= MAX_ORDER:
        raise ValueError(f"order must be an int in [1, {MAX_ORDER}], got {order!r}")
    if not isinstance(min_top_count, int) or isinstance(min_top_count, bool) or min_top_count < 1:
        raise ValueError(f"min_top_count must be an int >= 1, got {min_top_count!r}")
    raw: list[Counter] = [Counter() for _ in range(order + 1)]
    seen = 0
    for sentence in sentences:
        if not isinstance(sentence, str):
            raise TypeError(f"sentences must be strings, got {type(sentence).__name__}")
        words = sentence.split()
        if not words:
            continue
        if any(w in (BOS, EOS, UNK) for w in words):
            raise ValueError(f"a sentence contains a reserved token ({BOS}, {EOS}, {UNK}): {sentence[:80]!r}")
        seen += 1
        tokens = [BOS, *words, EOS]
        for k in range(1, order + 1):
            for i in range(len(tokens) - k + 1):
                raw[k][tuple(tokens[i : i + k])] += 1
    if not seen:
        raise ValueError("no sentence with words to estimate an n-gram model from")

    # the counts each order's estimate uses: raw at the top, continuation counts below
    adjusted: list[dict[tuple[str, ...], int]] = [{} for _ in range(order + 1)]
    adjusted[order] = dict(raw[order])
    for k in range(order - 1, 0, -1):
        left = Counter(gram[1:] for gram in raw[k + 1])
        adjusted[k] = {gram: (count if gram[0] == BOS else left[gram]) for gram, count in raw[k].items()}
        # a k-gram seen only after <s>-less positions always has a left neighbour, so none is 0,
        # except <s> itself (no left neighbour): it is never predicted, only a context
    logprobs: list[dict[tuple[str, ...], float]] = [{} for _ in range(order + 1)]
    backoffs: list[dict[tuple[str, ...], float]] = [{} for _ in range(order + 1)]
    lower: dict[tuple[str, ...], float] = {}  # probabilities (not logs) of the order below
    for k in range(1, order + 1):
        counts = {g: c for g, c in adjusted[k].items() if g != (BOS,)}
        discount = _discount(counts.values())
        totals: dict[tuple[str, ...], int] = defaultdict(int)
        types: dict[tuple[str, ...], int] = defaultdict(int)
        for gram, count in counts.items():
            totals[gram[:-1]] += count
            types[gram[:-1]] += 1
        probs: dict[tuple[str, ...], float] = {}
        if k == 1:
            words = [g for g in counts] + [(UNK,)]
            uniform = 1.0 / len(words)
            total = totals[()]
            mass = discount * types[()] / total
            for gram in words:
                probs[gram] = max(counts.get(gram, 0) - discount, 0.0) / total + mass * uniform
        else:
            for gram, count in counts.items():
                history = gram[:-1]
                mass = discount * types[history] / totals[history]
                probs[gram] = max(count - discount, 0.0) / totals[history] + mass * lower[gram[1:]]
            for history, total in totals.items():
                backoffs[k - 1][history] = math.log10(discount * types[history] / total)
            if k == order and order > 1 and min_top_count > 1:
                probs = _pruned(probs, raw[order], min_top_count, lower, backoffs[k - 1])
        logprobs[k] = {g: math.log10(p) for g, p in probs.items()}
        if k == 1:
            logprobs[1][(BOS,)] = NEVER
        lower = probs
    return NGramLM(order=order, logprobs=logprobs, backoffs=backoffs)
