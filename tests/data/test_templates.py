"""Tests for spokenlm.data.templates and spokenlm.data.text: labels in the allowed sets, offsets that
point at the right text, balance, determinism, speakable numbers, normalization maps."""

from __future__ import annotations

import random
import re
from collections import Counter

import pytest

from spokenlm.data import templates as T
from spokenlm.data.text import (
    map_span,
    normalize,
    normalize_with_map,
    number_words,
    ordinal_words,
    speakable,
    time_words,
    year_words,
)
from spokenlm.tasks import DIALOG_ACTS, NER_TAGS, SENTIMENTS, TASKS, parse_entities, tag_entities

N = 180  # 10 rounds of the 18 NER tags / 18 dialog acts, 60 of each sentiment
SPEAKABLE = re.compile(r"[A-Za-z .,;:!?'\-]+")  # no digits, symbols or double quotes


def _check_spans(text: str, entities) -> None:
    cursor = 0
    for tag, start, length in sorted(entities, key=lambda e: e[1]):
        assert tag in NER_TAGS
        assert length > 0 and start >= cursor and start + length <= len(text), (text, entities)
        phrase = text[start : start + length]
        assert phrase == phrase.strip() and phrase[0].isalnum() and phrase[-1].isalnum(), (text, phrase)
        cursor = start + length


@pytest.mark.parametrize("seed", [0, 7])
def test_ner_offsets_tags_and_balance(seed):
    tags = Counter()
    plain = 0
    for k in range(N):
        ex = T.ner_example(seed, k)
        assert SPEAKABLE.fullmatch(ex.text), ex.text
        _check_spans(ex.text, ex.entities)
        tags.update(t for t, _, _ in ex.entities)
        plain += not ex.entities
        # the inline-tagged training target reads back to the same entities
        parsed = parse_entities(tag_entities(ex.text, list(ex.entities)))
        assert parsed.text == ex.text
        assert [(e.tag, e.start_char, e.end_char - e.start_char) for e in parsed.entities] == sorted(
            ex.entities, key=lambda e: e[1]
        )
    assert set(tags) == set(NER_TAGS)
    # every tag is the focus of 1 in 18 items (minus the ~10% plain sentences)
    assert min(tags.values()) >= 0.6 * N / len(NER_TAGS), tags
    assert 0 < plain < 0.25 * N


def test_entities_survive_normalization():
    for k in range(N):
        ex = T.ner_example(3, k)
        text, index = normalize_with_map(ex.text)
        for tag, start, length in ex.entities:
            s, n = map_span(index, start, length)
            assert text[s : s + n] == normalize(ex.text[start : start + length])


def test_sentiment_labels_are_balanced():
    labels = Counter()
    for k in range(N):
        ex = T.sentiment_example(0, k)
        assert ex.sentiment in SENTIMENTS and SPEAKABLE.fullmatch(ex.text)
        assert TASKS["sentiment"].target({"sentiment": ex.sentiment}) == ex.sentiment
        labels[ex.sentiment] += 1
    assert labels == {s: N // 3 for s in SENTIMENTS}


def test_dialog_acts_cover_the_hvb_set_with_multi_label_turns():
    seen, multi = Counter(), 0
    for k in range(N):
        ex = T.dialog_example(0, k)
        assert ex.dialog_acts and set(ex.dialog_acts) <= set(DIALOG_ACTS)
        assert list(ex.dialog_acts) == [a for a in DIALOG_ACTS if a in ex.dialog_acts]  # canonical order
        assert SPEAKABLE.fullmatch(ex.text), ex.text
        seen.update(ex.dialog_acts)
        multi += len(ex.dialog_acts) > 1
        target = TASKS["dialog-act"].target({"dialog_acts": list(ex.dialog_acts)})
        assert TASKS["dialog-act"].parse(target, None).acts == ex.dialog_acts
    assert set(seen) == set(DIALOG_ACTS)
    assert 0.15 * N < multi < 0.6 * N


def test_dialog_frames_do_not_share_texts_across_acts():
    # the same words under two different labels would make the task ambiguous
    owner = {}
    for act, frames in T.DIALOG_FRAMES.items():
        for frame in frames:
            assert owner.setdefault(normalize(frame), act) == act, frame


def test_passages_answers_are_spans_and_summaries_exist():
    for k in range(2 * len(T.PASSAGE_FRAMES)):
        ex = T.passage_example(0, k)
        assert SPEAKABLE.fullmatch(ex.text), ex.text
        _check_spans(ex.text, ex.entities)
        assert 100 < len(ex.text) < 420
        assert ex.summary and ex.summary[0].isupper() and ex.summary.endswith(".")
        assert 1 <= len(ex.qa) <= T.MAX_PASSAGE_QUESTIONS
        spans = {(s, s + n) for _, s, n in ex.entities}
        for qa in ex.qa:
            assert qa.question.endswith("?") and "{" not in qa.question
            answer = ex.text[qa.start : qa.start + qa.length]
            assert answer and (qa.start, qa.start + qa.length) in spans  # every answer is an entity


def test_templates_are_deterministic_and_seeded():
    for make in T.TEMPLATE_STREAMS.values():
        assert [make(5, k) for k in range(20)] == [make(5, k) for k in range(20)]
        assert [make(5, k).text for k in range(20)] != [make(6, k).text for k in range(20)]
    # item k does not depend on which items were made before it
    late = T.ner_example(1, 99)
    for k in range(10):
        T.ner_example(1, k)
    assert T.ner_example(1, 99) == late


def test_unknown_slot_is_named():
    with pytest.raises(KeyError, match=r"\{colour\} names no entity tag"):
        T._render("a {colour} car", T._Builder(), random.Random(0), None, {})


# --- text ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n, words",
    [(0, "zero"), (13, "thirteen"), (40, "forty"), (123, "one hundred twenty three"),
     (30_000, "thirty thousand"), (2_000_005, "two million five")],
)  # fmt: skip
def test_number_words(n, words):
    assert number_words(n) == words


def test_ordinals_years_times():
    assert [ordinal_words(n) for n in (1, 2, 3, 5, 12, 20, 21, 100)] == [
        "first", "second", "third", "fifth", "twelfth", "twentieth", "twenty first", "one hundredth",
    ]  # fmt: skip
    assert [year_words(y) for y in (1998, 2005, 1905, 1900, 2024)] == [
        "nineteen ninety eight", "two thousand five", "nineteen oh five", "nineteen hundred", "twenty twenty four",
    ]  # fmt: skip
    assert time_words(7, 0) == "seven o'clock" and time_words(9, 5) == "nine oh five"


@pytest.mark.parametrize(
    "raw, spoken",
    [
        ("I paid $3.50 for 2 apples.", "I paid three dollars and fifty cents for two apples."),
        ("Meet me at 2:30, OK?", "Meet me at two thirty, okay?"),
        ("Christmas is December 25th.", "Christmas is December twenty fifth."),
        ("It ended in the 1930's, in 1945.", "It ended in the nineteen thirties, in nineteen forty five."),
        ("More than 30,000 people, 7% of them.", "More than thirty thousand people, seven percent of them."),
        ("Mr. Müller said \u201cyes\u201d \u2014 twice.", 'Mister Muller said "yes", twice.'),
    ],
)
def test_speakable_spells_out_what_a_voice_says(raw, spoken):
    assert speakable(raw) == spoken


@pytest.mark.parametrize("raw", ["I want an MP3 player!", "Henry VIII was king.", "a/b", "1 + 1", "\u4f60\u597d"])
def test_speakable_rejects_what_a_voice_would_misread(raw):
    assert speakable(raw) is None


def test_normalize_map_and_fast_path_agree():
    raw = "Don't go to 'the' Bridge-Street, Tom's friends' house!"
    text, index = normalize_with_map(raw)
    assert text == "don't go to the bridge street tom's friends house"
    assert normalize(raw) == text
    start = raw.index("Bridge-Street")
    assert map_span(index, start, len("Bridge-Street")) == (text.index("bridge street"), len("bridge street"))
    assert map_span(index, raw.index("!"), 1) is None
    rng = random.Random(0)
    for _ in range(2000):
        s = "".join(rng.choice("ab'. -Z9,") for _ in range(rng.randint(0, 12)))
        assert normalize(s) == normalize_with_map(s)[0], s
