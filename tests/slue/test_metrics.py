"""SLUE metrics against hand-computed cases and independent re-computations.

Each expected number below is worked out in the comment next to it; the "independent" tests
recompute a metric in a different way (a textbook Levenshtein table, slue-toolkit's set-of-triples
NER counting, interval arithmetic for NEL frames) and compare.
"""

import math
import random
from collections import defaultdict
from pathlib import Path

import pytest

from spokenlm.slue.metrics import (
    dialog_act_scores,
    nel_scores,
    ner_report,
    ner_scores,
    normalize_asr_text,
    normalize_phrase,
    rouge_scores,
    sentiment_scores,
    slue_score,
    sqa_frame_f1,
    word_error_rate,
)
from spokenlm.slue.readers import AnswerSpan, EntityTiming, NelRecord, WordTiming
from spokenlm.tasks import DIALOG_ACTS

approx = pytest.approx

# --- WER -----------------------------------------------------------------------------------------


def test_wer_sums_edits_and_reference_words_over_the_corpus():
    # "a b c d" -> "a x c": b->x (S) and d dropped (D); "e f" -> "e f g": g inserted (I). 3 / 6 words.
    r = word_error_rate(["a b c d", "e f"], ["a x c", "e f g"])
    assert (r.substitutions, r.deletions, r.insertions) == (1, 1, 1)
    assert (r.errors, r.reference_words) == (3, 6)
    assert r.wer == approx(50.0)


def test_wer_is_not_the_mean_of_utterance_wers():
    # 1 error over 1 + 4 = 5 words is 20 %; the per-utterance mean would be (100 + 0) / 2 = 50 %
    assert word_error_rate(["a", "b c d e"], ["x", "b c d e"]).wer == approx(20.0)


def test_wer_perfect_empty_and_none_hypotheses():
    assert word_error_rate(["a b", "c"], ["a b", "c"]).wer == 0.0
    assert word_error_rate(["a b", "c"], ["", None]).wer == approx(100.0)  # 3 deletions / 3 words
    assert word_error_rate(["  a   b "], ["a b"]).wer == 0.0  # words are whitespace-split


def test_wer_without_reference_words_divides_by_one_as_slue_toolkit():
    assert word_error_rate([""], ["a b"]).wer == approx(200.0)  # safe_divide: 2 errors / 1
    assert word_error_rate([], []).wer == 0.0


def test_wer_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="WER: 2 references but 1 hypotheses"):
        word_error_rate(["a", "b"], ["a"])


def _levenshtein(ref: list[str], hyp: list[str]) -> int:
    """A plain dynamic-programming table, the definition slue-toolkit's editdistance computes."""
    table = [[i + j if i * j == 0 else 0 for j in range(len(hyp) + 1)] for i in range(len(ref) + 1)]
    for i in range(1, len(ref) + 1):
        for j in range(1, len(hyp) + 1):
            table[i][j] = min(
                table[i - 1][j] + 1, table[i][j - 1] + 1, table[i - 1][j - 1] + (ref[i - 1] != hyp[j - 1])
            )
    return table[-1][-1]


def test_wer_matches_a_manual_levenshtein_on_random_sentences():
    rng = random.Random(0)
    vocab = "the a eu union vote today we must act now".split()
    refs = [" ".join(rng.choices(vocab, k=rng.randint(0, 12))) for _ in range(40)]
    hyps = [" ".join(rng.choices(vocab, k=rng.randint(0, 12))) for _ in range(40)]
    edits = sum(_levenshtein(r.split(), h.split()) for r, h in zip(refs, hyps))
    words = sum(len(r.split()) for r in refs)
    result = word_error_rate(refs, hyps)
    assert result.errors == edits
    assert result.wer == approx(100 * edits / words)


def test_normalize_asr_text_drops_sentence_punctuation_like_prepare_voxpopuli():
    assert normalize_asr_text("thank you. is it so?  yes; really!") == "thank you is it so yes really"


# --- NER -----------------------------------------------------------------------------------------


def test_ner_perfect_prediction_scores_100():
    refs = [[("GPE", "eu"), ("DATE", "today")], None, [("PERSON", "john smith")]]
    s = ner_scores(refs, refs)
    assert (s.micro.f1, s.macro.f1) == (100.0, 100.0)


def test_ner_repeated_pairs_count_by_occurrence():
    # ref has (GPE, eu) twice, hyp once: GPE tp 1 of 2 refs, 1 pred; DATE tp 1 of 1.
    # micro: tp 2, ref 3, pred 2 -> P 100, R 66.67, F1 80.
    # per tag: GPE P 100 R 50 F 66.67, DATE 100/100/100 -> macro P 100, R 75, F1 83.33.
    refs = [[("GPE", "eu"), ("GPE", "eu"), ("DATE", "today")]]
    hyps = [[("GPE", "eu"), ("DATE", "today")]]
    s = ner_scores(refs, hyps)
    assert (s.true_positives, s.num_reference, s.num_predicted) == (2, 3, 2)
    assert (s.micro.precision, s.micro.recall, s.micro.f1) == approx((100, 200 / 3, 80))
    assert s.per_tag["GPE"].f1 == approx(200 / 3)
    assert (s.macro.precision, s.macro.recall, s.macro.f1) == approx((100, 75, 250 / 3))


def test_ner_a_hypothesis_repeating_an_entity_gets_one_hit():
    # ref (GPE, eu) once, hyp twice: tp 1, P 50, R 100, F1 66.67
    s = ner_scores([[("GPE", "eu")]], [[("GPE", "eu"), ("GPE", "eu")]])
    assert s.micro.f1 == approx(200 / 3)


def test_ner_matches_only_within_a_sentence():
    s = ner_scores([[("PERSON", "john")], []], [[], [("PERSON", "john")]])
    assert s.micro.f1 == 0.0 and s.true_positives == 0


def test_ner_none_labels_and_empty_predictions():
    # None is a sentence without entities, on either side
    assert ner_scores([None, [("ORG", "un")]], [None, [("ORG", "un")]]).micro.f1 == 100.0
    empty = ner_scores([[("ORG", "un")], None], [[], None])
    assert (empty.micro.precision, empty.micro.recall, empty.micro.f1) == (0.0, 0.0, 0.0)
    assert empty.macro.f1 == 0.0  # ORG was seen in a reference, so it is averaged in with F1 0
    nothing = ner_scores([None, []], [[], None])  # no tag anywhere: toolkit micro 0, macro mean([])
    assert nothing.micro.f1 == 0.0 and math.isnan(nothing.macro.f1)


def test_ner_label_only_ignores_phrases():
    refs, hyps = [[("GPE", "paris")]], [[("GPE", "london")]]
    assert ner_scores(refs, hyps).micro.f1 == 0.0
    assert ner_scores(refs, hyps, label_only=True).micro.f1 == 100.0


def test_ner_combined_tags_map_and_drop():
    # DATE and TIME are both WHEN; LANGUAGE is not in the combined set and is dropped
    refs = [[("DATE", "today"), ("LANGUAGE", "french")]]
    hyps = [[("TIME", "today")]]
    assert ner_scores(refs, hyps).micro.f1 == 0.0
    combined = ner_scores(refs, hyps, tag_set="combined")
    assert combined.micro.f1 == 100.0 and set(combined.per_tag) == {"WHEN"}
    # a model trained on combined tags can be scored directly
    assert ner_scores(refs, [[("WHEN", "today")]], tag_set="combined").micro.f1 == 100.0


def test_ner_phrases_are_compared_in_slue_toolkit_spelling():
    assert normalize_phrase("europe's") == "europe 's"
    assert normalize_phrase("the u.s.") == "the us"
    assert normalize_phrase("members'") == "members"
    assert normalize_phrase("rock'n'roll") == "rock n 'roll"
    assert ner_scores([[("GPE", "europe's")]], [[("GPE", "europe 's")]]).micro.f1 == 100.0
    assert ner_scores([[("GPE", "europe's")]], [[("GPE", "europe 's")]], normalize=False).micro.f1 == 0.0


def test_ner_report_has_the_four_slue_toolkit_variants():
    report = ner_report([[("GPE", "eu")]], [[("LOC", "eu")]])
    assert set(report) == {"raw-standard", "raw-label", "combined-standard", "combined-label"}
    assert report["raw-standard"].micro.f1 == 0.0  # GPE vs LOC
    assert report["combined-standard"].micro.f1 == 100.0  # both PLACE


def test_ner_rejects_malformed_entities():
    with pytest.raises(ValueError, match=r"hypothesis 0: entity \('GPE',\) is not a \(tag, phrase\) pair"):
        ner_scores([[("GPE", "eu")]], [[("GPE",)]])


def _toolkit_ner(all_gt, all_pred):
    """slue-toolkit's counting, written its way: distinct (tag, phrase, k) triples, sets per tag."""

    def distinct(pairs):
        seen, out = defaultdict(int), []
        for pair in pairs:
            seen[pair] += 1
            out.append((*pair, seen[pair]))
        return out

    stats = defaultdict(lambda: [0, 0, 0])  # tp, gt, pred
    for gt, pred in zip(all_gt, all_pred):
        gt_sets, pred_sets = defaultdict(set), defaultdict(set)
        for tag, phrase, k in distinct(gt):
            gt_sets[tag].add((phrase, k))
        for tag, phrase, k in distinct(pred):
            pred_sets[tag].add((phrase, k))
        for tag in set(gt_sets) | set(pred_sets):
            stats[tag][0] += len(gt_sets[tag] & pred_sets[tag])
            stats[tag][1] += len(gt_sets[tag])
            stats[tag][2] += len(pred_sets[tag])

    def f1(tp, gt, pred):
        p, r = (tp / pred if pred else 0), (tp / gt if gt else 0)
        return 2 * p * r / (p + r) if p + r else 0

    micro = f1(*(sum(s[i] for s in stats.values()) for i in range(3)))
    macro = sum(f1(*s) for s in stats.values()) / len(stats)
    return 100 * micro, 100 * macro


def test_ner_matches_slue_toolkit_triple_counting_on_random_data():
    rng = random.Random(1)
    tags, phrases = ["GPE", "ORG", "DATE", "PERSON"], ["eu", "un", "today", "john"]
    sentence = lambda: [(rng.choice(tags), rng.choice(phrases)) for _ in range(rng.randint(0, 5))]  # noqa: E731
    refs = [sentence() for _ in range(60)]
    hyps = [sentence() for _ in range(60)]
    s = ner_scores(refs, hyps)
    micro, macro = _toolkit_ner(refs, hyps)
    assert (s.micro.f1, s.macro.f1) == approx((micro, macro))


# --- sentiment -----------------------------------------------------------------------------------


def test_sentiment_macro_f1_by_hand():
    # Positive: tp 1, fn 1 -> P 1, R .5, F 2/3. Negative: tp 1, fp 1 -> F 2/3. Neutral: F 1.
    # macro F1 = (2/3 + 2/3 + 1) / 3 = 7/9
    s = sentiment_scores(
        ["Positive", "Positive", "Negative", "Neutral"], ["Positive", "Negative", "Negative", "Neutral"]
    )
    assert s.macro.f1 == approx(700 / 9)
    assert s.per_class_f1 == approx({"Negative": 200 / 3, "Neutral": 100.0, "Positive": 200 / 3})
    assert s.accuracy == approx(75.0)


def test_sentiment_none_prediction_is_a_miss_not_a_class():
    # labels seen: Positive, Negative. Positive F1 1; Negative tp 0 -> 0. macro 50 (not 33.3)
    s = sentiment_scores(["Positive", "Negative"], ["Positive", None])
    assert s.macro.f1 == approx(50.0)
    assert set(s.per_class_f1) == {"Negative", "Positive"}


def test_sentiment_perfect_and_bad_references():
    assert sentiment_scores(["Neutral", "Positive"], ["Neutral", "Positive"]).macro.f1 == 100.0
    with pytest.raises(ValueError, match="reference sentiments must be one of Negative, Neutral, Positive"):
        sentiment_scores(["<mixed>"], ["Neutral"])


def test_sentiment_macro_matches_a_hand_count():
    rng = random.Random(2)
    labels = ["Negative", "Neutral", "Positive"]
    refs = [rng.choice(labels) for _ in range(50)]
    hyps = [rng.choice(labels + [None]) for _ in range(50)]
    f1s = []
    for c in sorted(set(refs) | {h for h in hyps if h}):
        tp = sum(r == h == c for r, h in zip(refs, hyps))
        fp = sum(h == c != r for r, h in zip(refs, hyps))
        fn = sum(r == c != h for r, h in zip(refs, hyps))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    assert sentiment_scores(refs, hyps).macro.f1 == approx(100 * sum(f1s) / len(f1s))


# --- dialog acts ---------------------------------------------------------------------------------


def test_dialog_act_macro_runs_over_all_18_acts():
    # thanks and question_general right, statement_problem missed; the other 15 acts never occur
    # and score 0 as sklearn's default gives: macro = 2/18. micro: tp 2, fp 0, fn 1 -> F1 80.
    refs = [["thanks"], ["question_general", "statement_problem"]]
    hyps = [["thanks"], ["question_general"]]
    s = dialog_act_scores(refs, hyps)
    assert len(DIALOG_ACTS) == 18
    assert s.macro.f1 == approx(100 * 2 / 18)
    assert s.micro.f1 == approx(80.0)
    assert s.per_class_f1["statement_problem"] == 0.0


def test_dialog_act_perfect_empty_and_errors():
    refs = [[act] for act in DIALOG_ACTS] + [[DIALOG_ACTS[0], DIALOG_ACTS[5]]]
    assert dialog_act_scores(refs, refs).macro.f1 == approx(100.0)
    empty = dialog_act_scores(refs, [None] * len(refs))
    assert (empty.macro.f1, empty.micro.f1) == (0.0, 0.0)
    with pytest.raises(ValueError, match="hypothesis 0: unknown dialog act 'greeting'"):
        dialog_act_scores([["thanks"]], [["greeting"]])


# --- ROUGE ---------------------------------------------------------------------------------------


def test_rouge_by_hand():
    # "the cat sat" vs "the cat": unigrams P 1, R 2/3 -> F .8; bigrams P 1, R 1/2 -> F 2/3;
    # LCS 2 -> F .8. A second, perfect document averages each with 1.
    one = rouge_scores(["the cat sat"], ["the cat"])
    assert (one.rouge1, one.rouge2, one.rougeL) == approx((80.0, 200 / 3, 80.0))
    two = rouge_scores(["the cat sat", "a dog"], ["the cat", "a dog"])
    assert two.rouge1 == approx(90.0)
    assert rouge_scores(["a dog"], [""]).rouge1 == 0.0
    assert rouge_scores(["a dog"], [None]).rougeL == 0.0


# --- SQA-5 frame-F1 ------------------------------------------------------------------------------


def test_sqa_frame_f1_by_hand():
    # gold [1.0, 2.0) s = frames [100, 200); pred [1.5, 2.5) = [150, 250): overlap 50,
    # P = 50/100, R = 50/100 -> F1 .5
    assert sqa_frame_f1([[(1.0, 2.0)]], [(1.5, 2.5)]).frame_f1 == approx(50.0)
    # the best of several gold spans counts; answer tuples and AnswerSpans are both accepted
    golds = [[("eu", 0.0, 1.0), AnswerSpan(answer="eu", start_s=3.0, end_s=4.0)]]
    assert sqa_frame_f1(golds, [(3.0, 4.0)]).frame_f1 == approx(100.0)
    # 10 ms frames truncate: 1.004 s is frame 100
    assert sqa_frame_f1([[(1.0, 2.0)]], [(1.004, 2.0)]).frame_f1 == approx(100.0)


def test_sqa_frame_f1_averages_over_questions_and_counts_no_answer_as_zero():
    s = sqa_frame_f1([[(1.0, 2.0)], [(0.0, 1.0)], [(5.0, 6.0)]], [(1.0, 2.0), None, (6.0, 7.0)])
    assert s.frame_f1 == approx(100 / 3) and s.num_questions == 3
    with pytest.raises(ValueError, match="SQA reference 0 has no answer span"):
        sqa_frame_f1([[]], [(0.0, 1.0)])


# --- NEL -----------------------------------------------------------------------------------------


def _w(word, start, end):
    entity = word.startswith("#")
    return WordTiming(word=word.lstrip("#"), start_s=start, end_s=end, in_entity=entity)


U1 = NelRecord(
    id="u1",
    audio_path=Path("u1.ogg"),
    split="dev",
    words=(_w("", 0.0, 0.5), _w("the", 0.5, 0.7), _w("#european", 0.7, 1.2), _w("#union", 1.2, 1.5), _w("", 1.5, 2.0)),
    entities=(EntityTiming(phrase="european union", start_s=0.7, end_s=1.5, label="ORG"),),
)
U2 = NelRecord(
    id="u2",
    audio_path=Path("u2.ogg"),
    split="dev",
    words=(_w("", 0.0, 1.0), _w("#paris", 1.0, 1.4)),
    entities=(EntityTiming(phrase="paris", start_s=1.0, end_s=1.4, label="GPE"),),
)
U3 = NelRecord(id="u3", audio_path=Path("u3.ogg"), split="dev", words=(_w("hello", 0.0, 0.5),), entities=())


def test_nel_perfect_localisation():
    s = nel_scores([U1], {"u1": [(0.7, 1.5)]})
    assert (s.frame.f1, s.word.f1) == (100.0, 100.0)


def test_nel_partial_segment_frames_and_word_tolerance():
    # pred [0.7, 1.3): 60 of the 80 entity frames, no false alarm -> P 1, R .75, F1 6/7.
    # words: "european" fully covered (hit); "union" [1.2, 1.5] covered 0.1 of 0.3 < 0.8 (miss)
    s = nel_scores([U1], {"u1": [(0.7, 1.3)]})
    assert (s.frame.precision, s.frame.recall, s.frame.f1) == approx((100.0, 75.0, 600 / 7))
    assert (s.word.precision, s.word.recall, s.word.f1) == approx((100.0, 50.0, 200 / 3))
    assert nel_scores([U1], {"u1": [(0.7, 1.3)]}, tolerance=0.3).word.f1 == approx(100.0)


def test_nel_covering_a_non_entity_word_is_a_false_alarm():
    # pred [0.5, 1.5): frames 100, entity 80 -> P .8, R 1, F1 8/9; words: "the" covered (fp),
    # both entity words hit -> P 2/3, R 1, F1 .8
    s = nel_scores([U1], {"u1": [(0.5, 1.5)]})
    assert s.frame.f1 == approx(800 / 9)
    assert s.word.f1 == approx(80.0)


def test_nel_undetected_utterances_and_unknown_ids():
    # u2 not predicted: 40 frames and 1 word missed. frame: tp 80, fn 40 -> R 2/3, F1 .8;
    # word: tp 2, fn 1 -> F1 .8. u3 has no entity: ignored. An unknown id adds its frames as
    # false alarms (50 of them) to frame-F1 only: P 80/130, R 80/120.
    hyps = {"u1": [(0.7, 1.5)]}
    s = nel_scores([U1, U2, U3], hyps)
    assert (s.frame.f1, s.word.f1) == approx((80.0, 80.0))
    s = nel_scores([U1, U2, U3], {**hyps, "zzz": [(0.0, 0.5)]})
    p, r = 80 / 130, 80 / 120
    assert s.frame.f1 == approx(100 * 2 * p * r / (p + r))
    assert s.word.f1 == approx(80.0)
    # an empty prediction list for an utterance with entities is the same as no entry
    assert nel_scores([U1, U2], {"u1": [(0.7, 1.5)], "u2": []}).frame.f1 == approx(80.0)


def test_nel_empty_predictions_and_offset():
    s = nel_scores([U1, U2], {})
    assert (s.frame.f1, s.word.f1, s.frame.recall) == (0.0, 0.0, 0.0)
    # predictions are rounded to 10 ms and shifted by the offset before scoring
    assert nel_scores([U1], {"u1": [(0.6, 1.4)]}, offset_s=0.1).frame.f1 == approx(100.0)


def test_nel_frame_f1_matches_interval_arithmetic():
    # the same counts by overlapping time intervals instead of frame arrays (exact at 10 ms times)
    hyps = {"u1": [(0.6, 0.9), (1.0, 1.3), (1.8, 1.9)], "u2": [(1.1, 1.6)]}
    refs = [U1, U2]

    def overlap(a, b):
        return max(0.0, min(a[1], b[1]) - max(a[0], b[0]))

    tp = pred_total = gold_total = 0.0
    for ref in refs:
        gold = [(w.start_s, w.end_s) for w in ref.words if w.in_entity]
        segs = hyps[ref.id]
        tp += sum(overlap(s, g) for s in segs for g in gold)
        pred_total += sum(e - s for s, e in segs)
        gold_total += sum(e - s for s, e in gold)
    p, r = tp / pred_total, tp / gold_total
    assert nel_scores(refs, hyps).frame.f1 == approx(100 * 2 * p * r / (p + r))


def test_nel_rejects_blind_references():
    blind = NelRecord(id="b", audio_path=Path("b.ogg"), split="test", words=(), entities=None)
    with pytest.raises(ValueError, match="NEL references are blind"):
        nel_scores([blind], {})


# --- SLUE-score ----------------------------------------------------------------------------------


def test_slue_score():
    # ((100 - (10 + 20) / 2) + 60 + 45) / 3 = 190 / 3
    assert slue_score(voxpopuli_wer=10, voxceleb_wer=20, ner_f1=60, sentiment_f1=45) == approx(190 / 3)
    assert slue_score(voxpopuli_wer=0, voxceleb_wer=0, ner_f1=100, sentiment_f1=100) == 100.0
