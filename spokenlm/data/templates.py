"""Label templates: labelled sentences for what the shared text corpora lack.

The openly licensed sentences in ../shared/data/text carry no entity, sentiment, dialog-act, QA or
summary labels, so the corpus builder writes its own, deterministic from a seed:

- `ner_example`       one sentence with entities of the 18 OntoNotes tags (SLUE VoxPopuli NER,
                      Shon et al., 2022, §3.2), exact (tag, start, length) character spans;
- `sentiment_example` one or two sentences labelled Negative / Neutral / Positive (SLUE VoxCeleb);
- `dialog_example`    a call-centre utterance with one or two HVB dialog acts (SLUE phase 2);
- `passage_example`   a 3–4 sentence passage with entities, several questions whose answers are
                      spans of the passage (SQA-style), and a one-sentence summary.

Every example is a `LabelledText` over *raw* text: cased, punctuated, with numbers written in words
so that a voice says exactly what the transcript holds. Item `k` of a stream depends only on
(seed, stream, k), so a longer corpus extends a shorter one. Templates never leave an entity
unlabelled in their literal text: NER labels of template text are exhaustive.

Label sets come from `spokenlm.tasks`; this module does not synthesize audio.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from importlib import resources
from dataclasses import dataclass, field
from typing import Callable

from spokenlm.data.text import number_words, ordinal_words, time_words, year_words
from spokenlm.tasks import DIALOG_ACTS, NER_TAGS, SENTIMENTS


@dataclass(frozen=True)
class QAPair:
    question: str
    start: int  # answer span over LabelledText.text
    length: int


@dataclass(frozen=True)
class LabelledText:
    """One templated utterance and its labels; spans index `text`."""

    text: str  # raw: cased, punctuated, numbers in words
    entities: tuple[tuple[str, int, int], ...] = ()  # SLUE (tag, start_char, length), exhaustive
    sentiment: str | None = None  # one of SENTIMENTS
    dialog_acts: tuple[str, ...] = ()  # subset of DIALOG_ACTS, in DIALOG_ACTS order
    qa: tuple[QAPair, ...] = ()
    summary: str | None = None


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any parts; stable across processes and Python versions (no hash())."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


_FAKERS: dict[str, object] = {}  # one Faker per process; reseeded for every item, so items stay independent


def _faker(seed: int):
    if "en_US" not in _FAKERS:
        from faker import Faker  # heavy-ish import, only where templates are generated

        _FAKERS["en_US"] = Faker("en_US")
    fake = _FAKERS["en_US"]
    fake.seed_instance(seed)
    return fake


# --- word lists (package data: templates.json) ---------------------------------------------------


def _tuples(value):
    """JSON lists back to the tuples the templates are written with (dicts keep their keys)."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return value


# The word lists, slot fillers and sentence frames are data, not code: spokenlm/data/templates.json,
# keyed by the lower-case names of the constants below. Read once, when this module is imported.
_DATA = json.loads(resources.files("spokenlm.data").joinpath("templates.json").read_text(encoding="utf-8"))

# A leading lowercase "the " is an article, kept outside the entity span; a capital "The " starts a
# title and belongs to it (WORK_OF_ART).

_COUNTRIES = _tuples(_DATA["countries"])
_CITIES = _tuples(_DATA["cities"])
_STATES = _tuples(_DATA["states"])
_NORP = _tuples(_DATA["norp"])
_LANGUAGES = _tuples(_DATA["languages"])
_LOCS = _tuples(_DATA["locs"])
_FACS = _tuples(_DATA["facs"])
_FAC_KINDS = _tuples(_DATA["fac_kinds"])
_ORGS = _tuples(_DATA["orgs"])
_ORG_SUFFIXES = _tuples(_DATA["org_suffixes"])
_PRODUCTS = _tuples(_DATA["products"])
_BRANDS = _tuples(_DATA["brands"])
_MODELS = _tuples(_DATA["models"])
_EVENTS = _tuples(_DATA["events"])
_SPORT_EVENTS = _tuples(_DATA["sport_events"])
_WORKS = _tuples(_DATA["works"])
_TITLE_ADJ = _tuples(_DATA["title_adj"])
_TITLE_NOUN = _tuples(_DATA["title_noun"])
_ACT_FIRST = _tuples(_DATA["act_first"])
_ACT_SECOND = _tuples(_DATA["act_second"])
_LAWS = _tuples(_DATA["laws"])
_MONTHS = _tuples(_DATA["months"])
_WEEKDAYS = _tuples(_DATA["weekdays"])
_SEASONS = _tuples(_DATA["seasons"])
_UNITS_DIST = _tuples(_DATA["units_dist"])
_UNITS_WEIGHT = _tuples(_DATA["units_weight"])
_UNITS_RAIN = _tuples(_DATA["units_rain"])
_CURRENCIES = _tuples(_DATA["currencies"])

SLOTS: dict[str, tuple[str, ...]] = _tuples(_DATA["slots"])


# --- entity phrase generators --------------------------------------------------------------------


def _small(rng: random.Random) -> int:
    return rng.randint(2, 12)


def _cardinal(rng: random.Random, variant: str | None) -> str:
    if variant == "small":
        return number_words(_small(rng))
    if variant == "big":
        if rng.random() < 0.5:
            return f"{number_words(rng.randint(2, 20))} {rng.choice(('thousand', 'million'))}"
        return number_words(rng.randint(2, 99) * 1000 + rng.choice((0, 0, rng.randint(1, 999))))
    r = rng.random()
    if r < 0.55:
        return number_words(rng.randint(2, 99))
    if r < 0.85:
        return number_words(rng.randint(100, 999))
    return number_words(rng.randint(1, 50) * 1000)


def _date(rng: random.Random, variant: str | None) -> str:
    month, day = rng.choice(_MONTHS), rng.randint(1, 28)
    year = rng.choice((rng.randint(1900, 1999), rng.randint(2000, 2029)))
    if variant == "on":
        return rng.choice((
            f"{month} {ordinal_words(day)}", f"the {ordinal_words(day)} of {month}", rng.choice(_WEEKDAYS),
            f"{month} {ordinal_words(day)}, {year_words(year)}",
        ))  # fmt: skip
    if variant == "in":
        return rng.choice((
            year_words(year), month, f"{month} {year_words(year)}",
            f"the {_decade(rng)}",
            f"the {rng.choice(_SEASONS)} of {year_words(year)}",
        ))  # fmt: skip
    if variant == "year":
        return year_words(year)
    if variant == "dur":
        n = rng.randint(2, 12)
        return f"{number_words(n)} {rng.choice(('days', 'weeks', 'months', 'years'))}"
    if variant == "future":
        return rng.choice((
            "tomorrow", "next week", "next month", "next year", f"next {rng.choice(_WEEKDAYS)}",
            "later this year", f"next {rng.choice(_SEASONS)}", "the day after tomorrow",
            f"in {number_words(rng.randint(2, 10))} weeks",
        ))  # fmt: skip
    return rng.choice((  # the default: a past date that stands alone in a sentence
        "yesterday", "last week", "last month", "last year", "earlier this year",
        f"last {rng.choice(_WEEKDAYS)}", f"last {rng.choice(_SEASONS)}", "the day before yesterday",
        f"{number_words(rng.randint(2, 10))} years ago", f"{number_words(rng.randint(2, 6))} days ago",
    ))  # fmt: skip


def _decade(rng: random.Random) -> str:
    year = rng.randint(192, 201) * 10
    words = year_words(year).split()
    last = words[-1]
    words[-1] = last[:-1] + "ies" if last.endswith("y") else last + "s"
    return " ".join(words)


def _time(rng: random.Random, variant: str | None) -> str:
    hour = rng.randint(1, 12)
    if variant == "dur":
        return rng.choice((
            f"{number_words(rng.randint(2, 9))} hours", "half an hour",
            f"{number_words(rng.choice((10, 15, 20, 30, 40, 45)))} minutes",
        ))  # fmt: skip
    return rng.choice((  # "at": follows "at" / "before" / "after"
        time_words(hour, 0), time_words(hour, rng.choice((15, 30, 45, 5, 20))), "noon", "midnight",
        f"half past {number_words(hour)}", f"a quarter to {number_words(hour)}",
        rng.choice((
            f"{number_words(rng.randint(5, 11))} in the morning", f"{number_words(rng.randint(1, 5))} in the afternoon",
            f"{number_words(rng.randint(6, 10))} in the evening",
        )),
    ))  # fmt: skip


def _money(rng: random.Random, variant: str | None) -> str:
    currency = rng.choice(_CURRENCIES) if rng.random() < 0.4 else "dollars"
    if variant == "big":
        return f"{number_words(rng.randint(2, 900))} {rng.choice(('million', 'billion'))} {currency}"
    r = rng.random()
    if r < 0.15:
        return f"{number_words(rng.randint(2, 99))} cents"
    if r < 0.3:
        return f"{number_words(rng.randint(2, 99))} dollars and {number_words(rng.randint(2, 99))} cents"
    return f"{_cardinal(rng, None)} {currency}"


def _quantity(rng: random.Random, variant: str | None) -> str:
    units = {"dist": _UNITS_DIST, "weight": _UNITS_WEIGHT, "rain": _UNITS_RAIN}.get(variant or "")
    if variant == "temp":
        return f"{number_words(rng.randint(2, 45))} degrees"
    if variant == "thick":
        return f"{number_words(rng.randint(20, 400))} {rng.choice(('meters', 'feet'))}"
    if variant == "speed":
        return f"{number_words(rng.randint(4, 18) * 10)} {rng.choice(('kilometers', 'miles'))} an hour"
    if units is None:
        units = _UNITS_DIST + _UNITS_WEIGHT + ("liters", "gallons")
    return f"{number_words(rng.randint(2, 500))} {rng.choice(units)}"


def _person(rng: random.Random, fake, variant: str | None, gender: str | None = None) -> str:
    g = gender or rng.choice("mf")
    first = fake.first_name_male() if g == "m" else fake.first_name_female()
    last = fake.last_name()
    if variant == "first":
        return first
    if variant == "last":
        return last
    if variant == "full" or rng.random() < 0.7:
        return f"{first} {last}"
    return rng.choice((first, last))


def _org(rng: random.Random, fake, variant: str | None) -> str:
    r = rng.random()
    if r < 0.35:
        return rng.choice(_ORGS)
    if r < 0.5:
        return rng.choice((f"the University of {rng.choice(_CITIES)}", f"{rng.choice(_CITIES)} University"))
    return f"{fake.last_name()} {rng.choice(_ORG_SUFFIXES)}"


def _gpe(rng: random.Random, fake, variant: str | None) -> str:
    r = rng.random()
    if variant == "country" or r < 0.35:
        return rng.choice(_COUNTRIES)
    if r < 0.8:
        return rng.choice(_CITIES)
    if r < 0.92:
        return rng.choice(_STATES)
    return fake.city()  # invented but plausible town names ("Port Jessica")


def _fac(rng: random.Random, fake, variant: str | None) -> str:
    if rng.random() < 0.4:
        return rng.choice(_FACS)
    return f"{fake.last_name()} {rng.choice(_FAC_KINDS)}"


def _product(rng: random.Random, fake, variant: str | None) -> str:
    if rng.random() < 0.5:
        return rng.choice(_PRODUCTS)
    return f"the {rng.choice(_BRANDS)} {rng.choice(_MODELS + (number_words(rng.randint(2, 9)),))}"


def _event(rng: random.Random, fake, variant: str | None) -> str:
    if variant == "sport":
        return rng.choice(_SPORT_EVENTS + (f"the {rng.choice(_CITIES)} Cup final",))
    r = rng.random()
    if r < 0.6:
        return rng.choice(_EVENTS)
    if r < 0.8:
        return f"Hurricane {fake.first_name()}"
    return f"the {rng.choice(_CITIES)} {rng.choice(('Film Festival', 'Marathon', 'Jazz Festival', 'Book Fair'))}"


def _work(rng: random.Random, fake, variant: str | None) -> str:
    if rng.random() < 0.6:
        return rng.choice(_WORKS)
    adj, noun = rng.choice(_TITLE_ADJ), rng.choice(_TITLE_NOUN)
    return rng.choice((f"The {adj} {noun}", f"Songs of the {noun}", f"A {adj} {noun}"))


def _law(rng: random.Random, fake, variant: str | None) -> str:
    r = rng.random()
    if variant == "act" or r < 0.45:
        if rng.random() < 0.5:
            return rng.choice(_LAWS[:3] + _LAWS[6:7] + _LAWS[10:])
        return f"the {rng.choice(_ACT_FIRST)} {rng.choice(_ACT_SECOND)} Act"
    if r < 0.75:
        return rng.choice(_LAWS)
    if r < 0.88:
        return f"Article {number_words(rng.randint(1, 60))}"
    return f"the {ordinal_words(rng.randint(1, 27)).title()} Amendment"


EntityGen = Callable[[random.Random, object, "str | None"], str]
_ENTITY_GENERATORS: dict[str, EntityGen] = {
    "CARDINAL": lambda rng, fake, v: _cardinal(rng, v),
    "DATE": lambda rng, fake, v: _date(rng, v),
    "EVENT": _event,
    "FAC": _fac,
    "GPE": _gpe,
    "LANGUAGE": lambda rng, fake, v: rng.choice(_LANGUAGES),
    "LAW": _law,
    "LOC": lambda rng, fake, v: rng.choice(_LOCS),
    "MONEY": lambda rng, fake, v: _money(rng, v),
    "NORP": lambda rng, fake, v: rng.choice(_NORP),
    "ORDINAL": lambda rng, fake, v: ordinal_words(rng.choice((1, 2, 3, 4, 5, 6, 7, 8, 9, 10, rng.randint(11, 30)))),
    "ORG": _org,
    "PERCENT": lambda rng, fake, v: rng.choice((
        f"{number_words(rng.randint(2, 99))} percent",
        f"{number_words(rng.randint(1, 20))} point {number_words(rng.randint(1, 9))} percent",
    )),  # fmt: skip
    "PERSON": lambda rng, fake, v: _person(rng, fake, v),
    "PRODUCT": _product,
    "QUANTITY": lambda rng, fake, v: _quantity(rng, v),
    "TIME": lambda rng, fake, v: _time(rng, v),
    "WORK_OF_ART": _work,
}
assert set(_ENTITY_GENERATORS) == set(NER_TAGS)


# --- rendering -----------------------------------------------------------------------------------

_SLOT = re.compile(r"\{([^{}]+)\}")
_SENTENCE_START = re.compile(r"(^|[.!?]\s+)([a-z])")


# Names take "the" outside the span ("the [ORG United Nations]"); dates keep it ("[DATE the fifth of May]").
_NAME_TAGS = frozenset(("EVENT", "FAC", "GPE", "LAW", "LOC", "NORP", "ORG", "PRODUCT", "WORK_OF_ART"))


class _Builder:
    """Accumulates raw text, entity spans and named spans (for QA answers)."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.length = 0
        self.entities: list[tuple[str, int, int]] = []
        self.spans: dict[str, tuple[int, int]] = {}

    def literal(self, text: str) -> None:
        self.parts.append(text)
        self.length += len(text)

    def entity(self, tag: str, phrase: str, name: str | None = None) -> None:
        if phrase.startswith("the ") and tag in _NAME_TAGS:  # an article, not part of the name
            self.literal("the ")
            phrase = phrase[4:]
        start = self.length
        self.literal(phrase)
        self.entities.append((tag, start, len(phrase)))
        if name is not None and name not in self.spans:
            self.spans[name] = (start, len(phrase))

    def text(self) -> str:
        # Capitalize sentence starts; lengths are unchanged, so every span stays valid.
        return _SENTENCE_START.sub(lambda m: m.group(1) + m.group(2).upper(), "".join(self.parts))


def _render(template: str, b: _Builder, rng: random.Random, fake, values: dict[str, str]) -> None:
    """Fill `template` into `b`. Slots: `{TAG}` / `{TAG:variant}` a fresh entity; `{name=TAG...}` a
    named entity drawn once per example (reused, and its first span recorded for QA); `{name}` a
    value from `values` or a word from `SLOTS` (unlabelled)."""
    cursor = 0
    for m in _SLOT.finditer(template):
        b.literal(template[cursor : m.start()])
        cursor = m.end()
        spec = m.group(1)
        name, _, spec = spec.rpartition("=")
        tag, _, variant = spec.partition(":")
        if tag in _ENTITY_GENERATORS:
            if name and name in values:
                phrase = values[name]
            else:
                phrase = _ENTITY_GENERATORS[tag](rng, fake, variant or None)
                if name:
                    values[name] = phrase
            b.entity(tag, phrase, name or None)
        elif tag in values:
            b.literal(values[tag])
        elif tag in SLOTS:
            b.literal(rng.choice(SLOTS[tag]))
        else:
            raise KeyError(f"template slot {{{m.group(1)}}} names no entity tag, value or word list")
    b.literal(template[cursor:])


# --- NER sentences -------------------------------------------------------------------------------

NER_FRAMES: tuple[str, ...] = _tuples(_DATA["ner_frames"])
_NER_PREFIXES = _tuples(_DATA["ner_prefixes"])
# Sentences with no entity at all: SLUE NER sets hold many (their label is None).
PLAIN_SENTENCES: tuple[str, ...] = _tuples(_DATA["plain_sentences"])
_TAG_FRAMES = {  # frames that feature each tag, so item k can focus on NER_TAGS[k % 18]
    tag: tuple(f for f in NER_FRAMES if re.search(r"\{(?:\w+=)?" + tag + r"(?::\w+)?\}", f)) for tag in NER_TAGS
}
assert all(_TAG_FRAMES.values()), [t for t, f in _TAG_FRAMES.items() if not f]
PLAIN_FRACTION = 0.1


def ner_example(seed: int, k: int) -> LabelledText:
    """Item `k` of the NER stream: a sentence featuring tag NER_TAGS[k % 18] (so the tags stay
    balanced in every prefix), or, one time in ten, a sentence with no entity."""
    rng = random.Random(derive_seed(seed, "ner", k))
    if rng.random() < PLAIN_FRACTION:
        return LabelledText(text=rng.choice(PLAIN_SENTENCES))
    fake = _faker(derive_seed(seed, "ner-faker", k))
    frame = rng.choice(_TAG_FRAMES[NER_TAGS[k % len(NER_TAGS)]])
    b = _Builder()
    if not frame.endswith("?") and rng.random() < 0.25:
        b.literal(rng.choice(_NER_PREFIXES))
        if frame[0] != "{":  # "The ..." continues the prefix: lower-case its first word
            frame = frame[0].lower() + frame[1:]
    _render(frame, b, rng, fake, {})
    return LabelledText(text=b.text(), entities=tuple(b.entities))


# --- sentiment -----------------------------------------------------------------------------------

SENTIMENT_FRAMES: dict[str, tuple[str, ...]] = _tuples(_DATA["sentiment_frames"])
_SENTIMENT_CONTEXT = _tuples(_DATA["sentiment_context"])
assert set(SENTIMENT_FRAMES) == set(SENTIMENTS)


def sentiment_example(seed: int, k: int) -> LabelledText:
    """Item `k` of the sentiment stream; labels cycle through SENTIMENTS, so every prefix is balanced."""
    rng = random.Random(derive_seed(seed, "sentiment", k))
    label = SENTIMENTS[k % len(SENTIMENTS)]
    b = _Builder()
    if label != "Neutral" and rng.random() < 0.3:  # a neutral lead-in makes longer, mixed utterances
        _render(rng.choice(_SENTIMENT_CONTEXT) + " ", b, rng, None, {})
    _render(rng.choice(SENTIMENT_FRAMES[label]), b, rng, None, {})
    return LabelledText(text=b.text(), sentiment=label)


# --- dialog acts (HVB: calls to a bank's customer service) ---------------------------------------

DIALOG_FRAMES: dict[str, tuple[str, ...]] = _tuples(_DATA["dialog_frames"])
# Two acts in one turn, in speaking order (first, second); HVB labels are multi-label.
DIALOG_PAIRS: tuple[tuple[str, str], ...] = _tuples(_DATA["dialog_pairs"])
assert set(DIALOG_FRAMES) == set(DIALOG_ACTS)
PAIR_FRACTION = 0.35


def dialog_example(seed: int, k: int) -> LabelledText:
    """Item `k` of the dialog-act stream: the main act cycles through DIALOG_ACTS; about a third of
    the turns add a second act (a natural pair such as apology + question_repeat)."""
    rng = random.Random(derive_seed(seed, "dialog", k))
    fake = _faker(derive_seed(seed, "dialog-faker", k))
    main = DIALOG_ACTS[k % len(DIALOG_ACTS)]
    acts = [main]
    pairs = [p for p in DIALOG_PAIRS if main in p]
    if pairs and rng.random() < PAIR_FRACTION:
        acts = list(rng.choice(pairs))
    first = fake.first_name()
    values = {
        "first": first,
        "name": f"{first} {fake.last_name()}",
        "digits": " ".join(number_words(rng.randint(0, 9)) for _ in range(rng.randint(4, 8))),
        "digits4": " ".join(number_words(rng.randint(0, 9)) for _ in range(4)),
        "amount": _money(rng, None),
        "days": number_words(rng.randint(2, 5)),
    }
    b = _Builder()
    for i, act in enumerate(acts):
        frame = rng.choice(DIALOG_FRAMES[act])
        if i:
            b.literal(" ")
        if act == "disfluency" and len(acts) > 1:  # "Um, so," flows into the next act
            frame = frame.rstrip(".") + ","
        elif i and acts[0] == "disfluency":
            frame = frame[0].lower() + frame[1:] if not frame.startswith(("I ", "I'", "{")) else frame
        _render(frame, b, rng, fake, values)
    text = b.text()
    return LabelledText(text=text, dialog_acts=tuple(a for a in DIALOG_ACTS if a in acts))


# --- passages: QA and summaries ------------------------------------------------------------------


@dataclass(frozen=True)
class PassageFrame:
    sentences: tuple[str, ...]  # rendered in order; {name=TAG} fills are shared across sentences
    questions: tuple[tuple[str, str], ...]  # (question template over values, answer value name)
    summary: str  # template over values
    gendered: str | None = None  # a PERSON value name; {he}/{He}/{his} then match that person
    optional: tuple[int, ...] = field(default=())  # sentence indices that may be left out


PASSAGE_FRAMES: tuple[PassageFrame, ...] = tuple(PassageFrame(**_tuples(frame)) for frame in _DATA["passage_frames"])
MAX_PASSAGE_QUESTIONS = 4


def passage_example(seed: int, k: int) -> LabelledText:
    """Item `k` of the passage stream: a short spoken passage with its entities, up to
    MAX_PASSAGE_QUESTIONS questions whose answers are spans of the passage, and a summary."""
    rng = random.Random(derive_seed(seed, "passage", k))
    fake = _faker(derive_seed(seed, "passage-faker", k))
    frame = PASSAGE_FRAMES[k % len(PASSAGE_FRAMES)]
    values: dict[str, str] = {}
    if frame.gendered:
        g = rng.choice("mf")
        he, his = ("he", "his") if g == "m" else ("she", "her")
        values.update(he=he, He=he.capitalize(), his=his)
        slot = re.search(r"\{" + frame.gendered + r"=PERSON(?::(\w+))?\}", " ".join(frame.sentences))
        values[frame.gendered] = _person(rng, fake, slot.group(1), gender=g)
    b = _Builder()
    for i, sentence in enumerate(frame.sentences):
        if i in frame.optional and rng.random() < 0.3:
            continue
        _render(("" if not b.parts else " ") + sentence, b, rng, fake, values)
    text = b.text()
    qa = [
        QAPair(question=_capitalize(q.format(**values)), start=b.spans[name][0], length=b.spans[name][1])
        for q, name in frame.questions
        if name in b.spans
    ]
    rng.shuffle(qa)
    return LabelledText(
        text=text,
        entities=tuple(b.entities),
        qa=tuple(qa[:MAX_PASSAGE_QUESTIONS]),
        summary=_capitalize(frame.summary.format(**values)),
    )


def _capitalize(text: str) -> str:
    return text[:1].upper() + text[1:]


# The streams the corpus builder draws from, by name.
TEMPLATE_STREAMS: dict[str, Callable[[int, int], LabelledText]] = {
    "ner": ner_example,
    "sentiment": sentiment_example,
    "dialog": dialog_example,
    "passage": passage_example,
}
