"""SLUE metrics, computed as slue-toolkit and the SLUE Phase-2 baselines compute them.

Shon et al., 2022 (SLUE, §4 and Table 11) and Shon et al., 2023 (SLUE Phase-2, §4). Each function
names the reference code it follows; where that code has a quirk, the quirk is kept and noted.

Units: every score is a percentage — F1, precision, recall, ROUGE and WER all in [0, 100] (WER can
exceed 100). Counts are plain integers.

- ``word_error_rate``   WER = summed word edits / summed reference words (eval_utils.get_wer),
                        edits counted by jiwer over whitespace-split words.
- ``ner_scores``        micro/macro F1 over per-sentence multisets of (tag, phrase) — or of tags
                        only with ``label_only`` — on the raw or combined tag set
                        (eval_utils.get_ner_scores + eval_w2v_ner.make_distinct); ``ner_report``
                        gives all four variants.
- ``sentiment_scores``  macro F1 over the labels present (sklearn, eval_w2v_sentiment).
- ``dialog_act_scores`` multi-label macro F1 over the 18 acts (sklearn, eval_w2v_da / eval_nlp_da).
- ``rouge_scores``      ROUGE-1/2/L F-measure with rouge-score. BERTScore and METEOR, which the
                        Phase-2 paper also reports, need models or NLTK data that are not available
                        offline; they are not computed.
- ``sqa_frame_f1``      SLUE-SQA-5 frame-F1: per question, the best time-overlap F1 against any
                        gold answer span at 10 ms frames, averaged over questions (DUAL / textQA).
- ``nel_scores``        VoxPopuli NEL frame-F1 at 10 ms and word-F1 with an overlap tolerance
                        (eval_utils_nel / ESPnet score_nel.py).
- ``slue_score``        ((100 - mean WER) + NER F1 + sentiment F1) / 3 (SLUE §4).
"""

from __future__ import annotations

import math
import re
import warnings
from collections import Counter
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Iterable, Literal, Mapping, Sequence

from spokenlm.tasks import COMBINED_TAGS, DIALOG_ACTS, SENTIMENTS

if TYPE_CHECKING:
    from spokenlm.slue.readers import AnswerSpan, NelRecord

TagSet = Literal["raw", "combined"]
Entity = tuple[str, str]  # (tag, phrase), the form SLUE submissions use: [['GPE', 'strasbourg']]

FRAME_S = 0.01  # NEL and SQA-5 score time at 10 ms frames


def _pct(x: float) -> float:
    return 100.0 * x


def _check_lengths(refs: Sequence, hyps: Sequence, what: str) -> None:
    if len(refs) != len(hyps):
        raise ValueError(f"{what}: {len(refs)} references but {len(hyps)} hypotheses")


@dataclass(frozen=True)
class PRF:
    precision: float  # percent
    recall: float  # percent
    f1: float  # percent


def _prf(tp: float, num_ref: float, num_pred: float) -> PRF:
    """slue-toolkit get_metrics: each ratio is 0 where its denominator is 0."""
    precision = tp / num_pred if num_pred else 0.0
    recall = tp / num_ref if num_ref else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return PRF(precision=_pct(precision), recall=_pct(recall), f1=_pct(f1))


# --- ASR ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WerResult:
    wer: float  # percent: 100 * errors / reference_words
    errors: int  # substitutions + deletions + insertions, summed over utterances
    reference_words: int
    substitutions: int
    deletions: int
    insertions: int

    def to_dict(self) -> dict:
        return asdict(self)


def word_error_rate(refs: Sequence[str], hyps: Sequence[str | None]) -> WerResult:
    """Corpus WER: edits summed over utterances over reference words summed over utterances.

    Words are whitespace-separated tokens, compared as they are (normalise both sides first, e.g.
    with ``normalize_asr_text``). A None hypothesis is empty. With no reference words at all the
    rate is errors / 1, as slue-toolkit's safe_divide gives.
    """
    _check_lengths(refs, hyps, "WER")
    if not refs:
        return WerResult(wer=0.0, errors=0, reference_words=0, substitutions=0, deletions=0, insertions=0)
    import jiwer

    out = jiwer.process_words(
        [" ".join(r.split()) for r in refs], [" ".join((h or "").split()) for h in hyps]
    )
    errors = out.substitutions + out.deletions + out.insertions
    ref_words = out.hits + out.substitutions + out.deletions
    return WerResult(
        wer=_pct(errors / (ref_words or 1)),
        errors=errors,
        reference_words=ref_words,
        substitutions=out.substitutions,
        deletions=out.deletions,
        insertions=out.insertions,
    )


def normalize_asr_text(text: str) -> str:
    """What slue-toolkit's prepare_voxpopuli does to VoxPopuli references before WER: drop
    ``. ; ? !`` and collapse whitespace. (VoxCeleb's normalized_text is used as it is.)"""
    return re.sub(r"\s+", " ", re.sub(r"[.;?!]", "", text)).strip()


# --- NER ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NerScores:
    micro: PRF  # over all (tag, phrase) occurrences: the headline NER F1
    macro: PRF  # unweighted mean over the tags seen in references or hypotheses; NaN if none
    per_tag: dict[str, PRF]
    true_positives: int
    num_reference: int
    num_predicted: int
    tag_set: str  # "raw" (18 OntoNotes tags) or "combined" (7 groups)
    label_only: bool  # True: only tags are compared ("label-F1"), phrases are ignored

    def to_dict(self) -> dict:
        return asdict(self)


_COMBINED_GROUPS = frozenset(COMBINED_TAGS.values())


def _combined(tag: str) -> str | None:
    """The combined tag of a raw tag (None where the combined set drops it); combined tags map to
    themselves, so hypotheses from a model trained on combined tags score too."""
    if tag in COMBINED_TAGS:
        return COMBINED_TAGS[tag]
    return tag if tag in _COMBINED_GROUPS else None


def normalize_phrase(phrase: str) -> str:
    """An entity phrase as slue-toolkit's NER references spell it (prepare/data_utils.py):
    ``. , ! ? ;`` removed, a trailing apostrophe dropped, and a word with an inner apostrophe split
    before it (``europe's`` -> ``europe 's``). Case is kept."""
    for mark in ".,!?;":
        phrase = phrase.replace(mark, "")
    words = []
    for word in phrase.split():
        if word.endswith("'"):
            word = word[:-1]
        if "'" in word and word != "'s":
            head, *rest = word.split("'")
            pieces = [head, *rest[:-1], "'" + rest[-1]]  # only the last piece keeps its apostrophe
        else:
            pieces = [word]
        words += [p for p in pieces if p not in ("", "'")]
    return " ".join(words)


def _sentence_counts(
    entities: Iterable[Entity] | None, tag_set: TagSet, label_only: bool, normalize: bool, where: str
) -> Counter:
    """The multiset of (tag, phrase) in one sentence: a pair said twice counts twice."""
    counts: Counter = Counter()
    for item in entities or ():
        if not (isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(x, str) for x in item)):
            raise ValueError(f"{where}: entity {item!r} is not a (tag, phrase) pair")
        tag, phrase = item
        if tag_set == "combined":
            tag = _combined(tag)
            if tag is None:
                continue
        if label_only:
            phrase = ""
        elif normalize:
            phrase = normalize_phrase(phrase)
        counts[(tag, phrase)] += 1
    return counts


def ner_scores(
    refs: Sequence[Iterable[Entity] | None],
    hyps: Sequence[Iterable[Entity] | None],
    *,
    tag_set: TagSet = "raw",
    label_only: bool = False,
    normalize: bool = True,
) -> NerScores:
    """slue-toolkit get_ner_scores over per-sentence entity lists.

    refs, hyps: one entry per sentence, a list of (tag, phrase) or None (no entities). Within a
    sentence and tag, true positives are the multiset intersection: [(GPE, eu), (GPE, eu)] against
    [(GPE, eu)] is 1 hit, 1 miss (make_distinct numbers repeats (tag, phrase, k)). Per tag, counts
    are summed over sentences; micro F1 pools all tags, macro averages the per-tag P/R/F1 over
    every tag that occurs in a reference or hypothesis anywhere. ``tag_set="combined"`` maps tags
    with COMBINED_TAGS and drops the rest (DATE -> WHEN, GPE -> PLACE, ...). ``normalize`` passes
    phrases through ``normalize_phrase`` on both sides.
    """
    if tag_set not in ("raw", "combined"):
        raise ValueError(f"unknown tag set {tag_set!r}; expected 'raw' or 'combined'")
    _check_lengths(refs, hyps, "NER")
    tp: Counter = Counter()
    n_ref: Counter = Counter()
    n_pred: Counter = Counter()
    for i, (ref, hyp) in enumerate(zip(refs, hyps)):
        ref_counts = _sentence_counts(ref, tag_set, label_only, normalize, f"reference {i}")
        hyp_counts = _sentence_counts(hyp, tag_set, label_only, normalize, f"hypothesis {i}")
        for (tag, _), n in (ref_counts & hyp_counts).items():
            tp[tag] += n
        for (tag, _), n in ref_counts.items():
            n_ref[tag] += n
        for (tag, _), n in hyp_counts.items():
            n_pred[tag] += n
    tags = sorted(set(n_ref) | set(n_pred))
    per_tag = {tag: _prf(tp[tag], n_ref[tag], n_pred[tag]) for tag in tags}
    if per_tag:
        macro = PRF(
            precision=sum(p.precision for p in per_tag.values()) / len(per_tag),
            recall=sum(p.recall for p in per_tag.values()) / len(per_tag),
            f1=sum(p.f1 for p in per_tag.values()) / len(per_tag),
        )
    else:  # np.mean of nothing in slue-toolkit
        macro = PRF(precision=math.nan, recall=math.nan, f1=math.nan)
    total_tp, total_ref, total_pred = sum(tp.values()), sum(n_ref.values()), sum(n_pred.values())
    return NerScores(
        micro=_prf(total_tp, total_ref, total_pred),
        macro=macro,
        per_tag=per_tag,
        true_positives=total_tp,
        num_reference=total_ref,
        num_predicted=total_pred,
        tag_set=tag_set,
        label_only=label_only,
    )


def ner_report(
    refs: Sequence[Iterable[Entity] | None], hyps: Sequence[Iterable[Entity] | None], *, normalize: bool = True
) -> dict[str, NerScores]:
    """All four slue-toolkit NER variants, keyed "{raw|combined}-{standard|label}" as its result
    files are; SLUE's headline NER F1 is ``["combined-standard"].micro.f1``."""
    return {
        f"{tag_set}-{'label' if label_only else 'standard'}": ner_scores(
            refs, hyps, tag_set=tag_set, label_only=label_only, normalize=normalize
        )
        for tag_set in ("raw", "combined")
        for label_only in (False, True)
    }


# --- classification: sentiment, dialog acts -----------------------------------------------------


@dataclass(frozen=True)
class ClassificationScores:
    macro: PRF  # the SLUE metric
    weighted: PRF  # support-weighted; slue-toolkit stores this under the key "micro"
    micro: PRF  # true micro average
    per_class_f1: dict[str, float]  # percent
    accuracy: float  # percent of items exactly right (all labels, for multi-label)

    def to_dict(self) -> dict:
        return asdict(self)


def _sklearn_scores(y_true, y_pred, labels: Sequence[str], per_class_names: Sequence[str]) -> ClassificationScores:
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    def avg(average: str) -> PRF:
        p, r, f, _ = precision_recall_fscore_support(
            y_true, y_pred, labels=labels, average=average, zero_division=0
        )
        return PRF(precision=_pct(p), recall=_pct(r), f1=_pct(f))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zero_division=0 is what sklearn's default "warn" yields
        _, _, per_class, _ = precision_recall_fscore_support(
            y_true, y_pred, labels=labels, average=None, zero_division=0
        )
        return ClassificationScores(
            macro=avg("macro"),
            weighted=avg("weighted"),
            micro=avg("micro"),
            per_class_f1={name: _pct(f) for name, f in zip(per_class_names, per_class)},
            accuracy=_pct(accuracy_score(y_true, y_pred)),
        )


_NO_LABEL = "<none>"  # a hypothesis with no valid label: wrong for every class, a class of none


def sentiment_scores(refs: Sequence[str], hyps: Sequence[str | None]) -> ClassificationScores:
    """Sentiment F1 as eval_w2v_sentiment: sklearn macro average over the labels that occur in
    the references or hypotheses. A None (or non-SENTIMENTS) hypothesis counts as a miss for its
    reference class and adds no class of its own."""
    _check_lengths(refs, hyps, "sentiment")
    bad = sorted({r for r in refs if r not in SENTIMENTS}, key=str)
    if bad:
        raise ValueError(f"reference sentiments must be one of {', '.join(SENTIMENTS)}; got {bad}")
    if not refs:
        raise ValueError("sentiment: no utterances to score")
    preds = [h if h in SENTIMENTS else _NO_LABEL for h in hyps]
    labels = sorted(set(refs) | (set(preds) - {_NO_LABEL}))
    return _sklearn_scores(list(refs), preds, labels, labels)


def dialog_act_scores(
    refs: Sequence[Iterable[str]], hyps: Sequence[Iterable[str] | None]
) -> ClassificationScores:
    """Dialog-act F1 as slue-toolkit eval_w2v_da / eval_nlp_da: each utterance is an 18-way
    indicator vector (DIALOG_ACTS, sorted as slue-toolkit sorts them) and sklearn's macro F1 runs
    over all 18 acts — an act absent from references and hypotheses alike scores 0, as sklearn's
    default gives. A None hypothesis predicts no act."""
    _check_lengths(refs, hyps, "dialog acts")
    if not refs:
        raise ValueError("dialog acts: no utterances to score")
    index = {act: i for i, act in enumerate(DIALOG_ACTS)}

    def indicators(acts: Iterable[str] | None, where: str) -> list[int]:
        row = [0] * len(DIALOG_ACTS)
        if isinstance(acts, str):
            raise ValueError(f"{where}: dialog acts must be a list of act names, got the string {acts!r}")
        for act in acts or ():
            if act not in index:
                raise ValueError(f"{where}: unknown dialog act {act!r}")
            row[index[act]] = 1
        return row

    import numpy as np

    y_true = np.array([indicators(r, f"reference {i}") for i, r in enumerate(refs)])
    y_pred = np.array([indicators(h, f"hypothesis {i}") for i, h in enumerate(hyps)])
    return _sklearn_scores(y_true, y_pred, list(range(len(DIALOG_ACTS))), DIALOG_ACTS)


# --- summarization ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RougeScores:
    rouge1: float  # mean F-measure over documents, percent
    rouge2: float
    rougeL: float

    def to_dict(self) -> dict:
        return asdict(self)


def rouge_scores(refs: Sequence[str], hyps: Sequence[str | None]) -> RougeScores:
    """ROUGE-1/2/L F-measure (rouge-score, no stemming: the settings of HF ``evaluate``'s "rouge"
    that ESPnet's score_summarization.py calls), averaged over documents. ``evaluate`` reports the
    bootstrap median of that mean; the plain mean is its deterministic value."""
    _check_lengths(refs, hyps, "ROUGE")
    if not refs:
        raise ValueError("ROUGE: no documents to score")
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)
    sums = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for ref, hyp in zip(refs, hyps):
        for key, score in scorer.score(ref, hyp or "").items():
            sums[key] += score.fmeasure
    return RougeScores(**{k: _pct(v / len(refs)) for k, v in sums.items()})


# --- time-localised tasks: SQA-5 and NEL --------------------------------------------------------


def _frame(seconds: float) -> int:
    """Frame index of a time, truncated as slue-toolkit's ``convert`` does (int(sec * 100))."""
    return int(seconds * (1 / FRAME_S))


@dataclass(frozen=True)
class SqaScores:
    frame_f1: float  # percent, mean over questions of the best per-span frame F1
    num_questions: int

    def to_dict(self) -> dict:
        return asdict(self)


def _span_f1(pred: tuple[int, int], gold: tuple[int, int]) -> float:
    """textQA / DUAL F1EM_score over frame spans [start, end)."""
    (p0, p1), (g0, g1) = pred, gold
    if p0 >= p1 or p1 <= g0 or p0 >= g1 or g0 == g1:  # no overlap (or a degenerate span)
        return 1.0 if pred == gold else 0.0
    overlap = min(p1, g1) - max(p0, g0)
    precision, recall = overlap / (p1 - p0), overlap / (g1 - g0)
    return 2 * precision * recall / (precision + recall)


def _as_span(span: AnswerSpan | Sequence[float]) -> tuple[float, float]:
    if hasattr(span, "start_s"):
        return span.start_s, span.end_s  # type: ignore[union-attr]
    if len(span) == 3:  # (answer, start, end)
        return float(span[1]), float(span[2])
    start, end = span
    return float(start), float(end)


def sqa_frame_f1(
    refs: Sequence[Sequence[AnswerSpan | Sequence[float]]],
    hyps: Sequence[tuple[float, float] | None],
) -> SqaScores:
    """SLUE-SQA-5 frame-F1 (FF1).

    refs: per question, every gold answer span in the document audio (AnswerSpan, (start, end)
    or (answer, start, end) seconds). hyps: per question, the predicted (start, end) seconds or
    None. Times become 10 ms frames; a question scores the best overlap F1 over its gold spans
    (precision = overlap / predicted frames, recall = overlap / gold frames), and FF1 is the mean.
    """
    _check_lengths(refs, hyps, "SQA")
    if not refs:
        raise ValueError("SQA: no questions to score")
    total = 0.0
    for i, (golds, hyp) in enumerate(zip(refs, hyps)):
        if not golds:
            raise ValueError(f"SQA reference {i} has no answer span")
        if hyp is None:
            continue
        pred = tuple(_frame(t) for t in _as_span(hyp))
        total += max(_span_f1(pred, tuple(_frame(t) for t in _as_span(g))) for g in golds)  # type: ignore[arg-type]
    return SqaScores(frame_f1=_pct(total / len(refs)), num_questions=len(refs))


@dataclass(frozen=True)
class NelScores:
    frame: PRF  # 10 ms frames inside vs outside entity words
    word: PRF  # words counted found when predicted segments cover >= tolerance of them
    tolerance: float
    offset_s: float

    def to_dict(self) -> dict:
        return asdict(self)


def _evaluate(tp: int, fn: int, fp: int) -> PRF:
    """eval_utils_nel.evaluate: all zero unless something was found."""
    if tp == 0:
        return PRF(precision=0.0, recall=0.0, f1=0.0)
    return _prf(tp, tp + fn, tp + fp)


def _ratio(overlap: float, length: float) -> float:
    """overlap / length with numpy's float semantics, as slue-toolkit divides numpy scalars:
    a zero-length word gives nan (0/0, never below the tolerance) or -inf."""
    if length:
        return overlap / length
    return math.nan if overlap == 0 else math.copysign(math.inf, overlap)


def _nel_word_counts(words, segments: Sequence[tuple[float, float]], tolerance: float) -> tuple[int, int, int]:
    """eval_utils_nel.process_gt_word over one utterance: (tp, fn, fp).

    A single pointer walks the time-ordered predicted segments alongside the words. A segment that
    ends inside a silence is used up there. A word is covered by the segments overlapping it, moving
    on while they end inside it. An entity word covered >= tolerance is a hit, less a miss; any
    other word covered >= tolerance is a false alarm. Once the segments run out the walk stops, and
    the words left are not counted at all — slue-toolkit's behaviour, kept for comparable numbers.
    """
    tp = fn = fp = 0
    k = 0
    for w in words:
        if k >= len(segments):
            break
        start, end = segments[k]
        if w.word == "":  # silence, inside an entity or not
            if end <= w.end_s:
                k += 1
            continue
        if start >= w.end_s:  # the current segment begins after this word
            fn += w.in_entity
            continue
        overlap = min(end, w.end_s) - max(start, w.start_s)
        while end <= w.end_s:  # this segment ends inside the word: take in the next ones too
            k += 1
            if k == len(segments):
                break
            start, end = segments[k]
            if start < w.end_s:
                overlap += min(end, w.end_s) - max(start, w.start_s)
        covered = not _ratio(overlap, w.end_s - w.start_s) < tolerance
        if w.in_entity:
            tp, fn = (tp + 1, fn) if covered else (tp, fn + 1)
        elif covered:
            fp += 1
    return tp, fn, fp


def nel_scores(
    refs: Sequence[NelRecord],
    hyps: Mapping[str, Sequence[tuple[float, float]]],
    *,
    tolerance: float = 0.8,
    offset_s: float = 0.0,
) -> NelScores:
    """VoxPopuli NEL frame-F1 and word-F1 (slue-toolkit eval_utils_nel, ESPnet score_nel.py).

    refs: NelRecords (words with their in-entity flags, and the entity segments); hyps: utterance
    id -> predicted entity segments (start, end) in seconds. As slue-toolkit's ``clip_dur``, each
    predicted time is rounded to 10 ms, shifted by ``offset_s`` (a constant tuned on dev) and
    clipped at 0. Frame-F1 counts 10 ms frames; an utterance with entities but no prediction adds
    its entity frames to the misses, and a predicted utterance absent from the references adds its
    frames to the false alarms. Word-F1 (see ``_nel_word_counts``) uses ``tolerance`` (slue-toolkit
    reports 1.0 to 0.5; its baselines quote 0.8); an undetected utterance adds the words of its
    entity phrases to the misses.
    """
    import numpy as np

    by_id = {r.id: r for r in refs}
    blind = [r.id for r in refs if r.entities is None]
    if blind:
        raise ValueError(f"NEL references are blind (no entity labels), e.g. {blind[0]!r}")
    preds = {
        utt: sorted((_clip(s, offset_s), _clip(e, offset_s)) for s, e in segments)
        for utt, segments in hyps.items()
    }

    # frame-F1
    tp = fn = fp = 0
    undetected = [r for r in refs if r.entities and r.id not in preds]
    for utt, segments in preds.items():
        ref = by_id.get(utt)
        if segments and ref is not None:
            last = max(max(e for _, e in segments), ref.words[-1].end_s if ref.words else 0.0)
            pred = np.zeros(_frame(last), dtype=bool)
            gold = np.zeros(_frame(last), dtype=bool)
            for s, e in segments:
                pred[_frame(s) : _frame(e)] = True
            for w in ref.words:
                if w.in_entity:  # silences inside an entity phrase count as entity frames
                    gold[_frame(w.start_s) : _frame(w.end_s)] = True
            tp += int((pred & gold).sum())
            fp += int((pred & ~gold).sum())
            fn += int((~pred & gold).sum())
        elif segments:
            fp += sum(_frame(e) - _frame(s) for s, e in segments)
        elif ref is not None and ref.entities:
            undetected.append(ref)
    fn += sum(_frame(e.end_s) - _frame(e.start_s) for r in undetected for e in r.entities)
    frame = _evaluate(tp, fn, fp)

    # word-F1
    tp = fn = fp = 0
    undetected = [r for r in refs if r.entities and r.id not in preds]
    for ref in refs:
        segments = preds.get(ref.id)
        if segments:
            a, b, c = _nel_word_counts(ref.words, segments, tolerance)
            tp, fn, fp = tp + a, fn + b, fp + c
        elif segments is not None and ref.entities:
            undetected.append(ref)
    fn += sum(len(e.phrase.split(" ")) for r in undetected for e in r.entities)
    word = _evaluate(tp, fn, fp)
    return NelScores(frame=frame, word=word, tolerance=tolerance, offset_s=offset_s)


def _clip(t: float, offset_s: float) -> float:
    import numpy as np

    return max(float(np.round(t, 2)) + offset_s, 0.0)  # np.round, as clip_dur rounds


# --- SLUE-score ---------------------------------------------------------------------------------


def slue_score(*, voxpopuli_wer: float, voxceleb_wer: float, ner_f1: float, sentiment_f1: float) -> float:
    """SLUE-score (SLUE §4): ((100 - mean of the two WERs) + NER F1 + sentiment F1) / 3.

    All in percent. ner_f1 is VoxPopuli micro F1 on the combined tag set (slue-toolkit's default
    eval_label), sentiment_f1 VoxCeleb macro F1.
    """
    return ((100.0 - (voxpopuli_wer + voxceleb_wer) / 2) + ner_f1 + sentiment_f1) / 3
