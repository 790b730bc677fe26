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
import random
import re
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


# --- word lists ----------------------------------------------------------------------------------
# A leading lowercase "the " is an article, kept outside the entity span; a capital "The " starts a
# title and belongs to it (WORK_OF_ART).

_COUNTRIES = (
    "France", "Germany", "Japan", "Brazil", "Canada", "Mexico", "India", "China", "Italy", "Spain",
    "Portugal", "Kenya", "Nigeria", "Egypt", "Peru", "Chile", "Argentina", "Sweden", "Norway",
    "Poland", "Greece", "Turkey", "Vietnam", "Thailand", "Australia", "Ireland", "Scotland",
    "the United States", "the Netherlands", "the Philippines", "South Korea", "New Zealand",
    "Morocco", "Ghana", "Colombia", "Iceland", "Finland", "Austria", "Indonesia", "Pakistan",
)  # fmt: skip
_CITIES = (
    "Paris", "London", "Tokyo", "Berlin", "Madrid", "Rome", "Chicago", "Boston", "Denver", "Seattle",
    "Houston", "Atlanta", "Toronto", "Sydney", "Dublin", "Lisbon", "Nairobi", "Cairo", "Lima",
    "Mumbai", "Seoul", "Bangkok", "Oslo", "Vienna", "Prague", "Warsaw", "Athens", "Istanbul",
    "San Francisco", "Los Angeles", "New York", "Mexico City", "Buenos Aires", "Cape Town",
    "Montreal", "Vancouver", "Miami", "Phoenix", "Portland", "Nashville", "Edinburgh", "Manchester",
    "Osaka", "Hamburg", "Barcelona", "Naples", "Stockholm", "Helsinki", "Lagos", "Accra",
)  # fmt: skip
_STATES = (
    "Texas", "California", "Ohio", "Oregon", "Florida", "Georgia", "Nevada", "Arizona", "Maine",
    "Vermont", "Alaska", "Montana", "Michigan", "Kentucky", "Colorado", "Virginia", "Iowa", "Utah",
)  # fmt: skip
_NORP = (
    "American", "British", "French", "German", "Japanese", "Chinese", "Mexican", "Brazilian",
    "Canadian", "Indian", "Italian", "Spanish", "Russian", "Korean", "Nigerian", "Egyptian",
    "Kenyan", "Australian", "Irish", "Swedish", "Polish", "Greek", "Turkish", "Vietnamese",
    "Peruvian", "Dutch", "Norwegian", "Scottish", "Catholic", "Buddhist", "Muslim", "Jewish",
    "Hindu", "Protestant", "Democratic", "Republican", "European", "African", "Asian", "Latino",
)  # fmt: skip
_LANGUAGES = (
    "English", "Spanish", "French", "German", "Mandarin", "Japanese", "Arabic", "Portuguese",
    "Russian", "Hindi", "Italian", "Korean", "Swahili", "Dutch", "Greek", "Turkish", "Polish",
    "Latin", "Hebrew", "Bengali", "Cantonese", "Vietnamese", "Welsh", "Finnish", "Norwegian",
)  # fmt: skip
_LOCS = (
    "Europe", "Asia", "Africa", "South America", "North America", "Antarctica", "Siberia",
    "Scandinavia", "Patagonia", "the Pacific Ocean", "the Atlantic Ocean", "the Indian Ocean",
    "the Alps", "the Rocky Mountains", "the Andes", "the Himalayas", "the Sahara", "the Nile",
    "the Mediterranean", "the Caribbean", "the Middle East", "the Arctic", "the Great Lakes",
    "the Gulf of Mexico", "the Mississippi River", "the Grand Canyon", "Lake Victoria",
    "Mount Everest", "the Amazon rain forest", "the Baltic Sea", "the Midwest", "Death Valley",
)  # fmt: skip
_FACS = (
    "the Golden Gate Bridge", "Heathrow Airport", "the Eiffel Tower", "Grand Central Station",
    "the Empire State Building", "Madison Square Garden", "the Brooklyn Bridge", "Wembley Stadium",
    "the Lincoln Memorial", "Union Station", "Kennedy Airport", "the Hoover Dam",
    "the Sydney Opera House", "the Tower of London", "Penn Station", "the Panama Canal",
)  # fmt: skip
_FAC_KINDS = ("Street", "Avenue", "Road", "Bridge", "Stadium", "Airport", "Hall", "Tower", "Station", "Arena")
_ORGS = (
    "the United Nations", "the World Health Organization", "the Red Cross", "Google", "Microsoft",
    "Amazon", "Toyota", "the Federal Reserve", "Harvard University", "Oxford University",
    "the Boston Symphony Orchestra", "the New York Times", "the World Bank", "Greenpeace",
    "the Supreme Court", "the Smithsonian Institution", "Stanford University", "the BBC",
)  # fmt: skip
_ORG_SUFFIXES = (
    "Group", "Industries", "and Sons", "Holdings", "Corporation", "Labs", "Foundation", "Partners",
    "Systems", "Motors", "Bank", "Airlines", "Energy", "Foods", "Media", "Insurance",
)  # fmt: skip
_PRODUCTS = (
    "the iPhone", "the Toyota Corolla", "the Honda Civic", "the Ford Mustang", "Windows",
    "the PlayStation", "the Kindle", "the Volkswagen Beetle", "the Nintendo Switch", "the Model T",
    "the Boeing seven forty seven", "the Walkman", "the Tesla Model three", "the Apple Watch",
)  # fmt: skip
_BRANDS = ("Zephyr", "Orion", "Nova", "Falcon", "Atlas", "Vega", "Titan", "Aurora", "Comet", "Pulse", "Summit", "Echo")
_MODELS = ("Pro", "Max", "Lite", "Plus", "Air", "Sport", "Mini", "Ultra")
_EVENTS = (
    "World War Two", "the Olympic Games", "the Super Bowl", "the World Cup", "the French Revolution",
    "the Cold War", "the Great Depression", "the Boston Marathon", "the Tour de France",
    "the Summer Olympics", "the Gold Rush", "the Battle of Hastings", "the Civil War",
    "the Industrial Revolution", "the Winter Olympics", "the Wimbledon final", "Woodstock",
)  # fmt: skip
_SPORT_EVENTS = ("the World Cup", "the Olympic Games", "the Summer Olympics", "the Winter Olympics", "the Champions Cup")
_WORKS = (
    "Pride and Prejudice", "The Great Gatsby", "Romeo and Juliet", "the Mona Lisa", "Moby Dick",
    "War and Peace", "The Old Man and the Sea", "Hamlet", "Swan Lake", "The Starry Night",
    "Star Wars", "The Lord of the Rings", "Bohemian Rhapsody", "The Four Seasons", "Don Quixote",
    "Little Women", "The Odyssey", "Frankenstein", "Gone with the Wind", "The Sound of Music",
    "The Nutcracker", "Moonlight Sonata", "Jane Eyre", "Macbeth", "The Night Watch",
)  # fmt: skip
_TITLE_ADJ = (
    "Silent", "Last", "Hidden", "Broken", "Golden", "Long", "Quiet", "Lost", "Distant", "Little", "Winter", "Endless",
)  # fmt: skip
_TITLE_NOUN = (
    "River", "Lighthouse", "Garden", "Promise", "Horizon", "Road", "Kingdom", "Summer", "Letter", "Island", "Song",
    "Harbor",
)  # fmt: skip
_ACT_FIRST = ("Clean", "Fair", "Safe", "National", "Public", "Digital", "Rural", "Family", "Open", "Civil")
_ACT_SECOND = (
    "Water", "Energy", "Housing", "Privacy", "Transport", "Education", "Health Care", "Labor", "Trade", "Farm", "Air",
    "Rights",
)  # fmt: skip
_LAWS = (
    "the Clean Air Act", "the First Amendment", "the Civil Rights Act", "the Constitution",
    "the Geneva Convention", "the Treaty of Versailles", "the Affordable Care Act",
    "the Bill of Rights", "the Paris Agreement", "the Magna Carta", "the Voting Rights Act",
)  # fmt: skip
_MONTHS = (
    "January", "February", "March", "April", "May", "June", "July", "August", "September",
    "October", "November", "December",
)  # fmt: skip
_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_SEASONS = ("spring", "summer", "fall", "winter")
_UNITS_DIST = ("kilometers", "miles", "meters", "feet")
_UNITS_WEIGHT = ("kilograms", "pounds", "grams", "tons")
_UNITS_RAIN = ("inches", "centimeters", "millimeters")
_CURRENCIES = ("dollars", "euros", "yen", "pesos", "British pounds")

SLOTS: dict[str, tuple[str, ...]] = {
    "job": ("teacher", "nurse", "engineer", "chef", "pilot", "farmer", "lawyer", "photographer",
            "student", "doctor", "musician", "carpenter", "journalist", "mechanic", "librarian"),
    "thing": ("the movie", "the new phone", "this restaurant", "the hotel", "the concert",
              "the service", "the food", "the book", "this app", "the new update", "the flight",
              "the show", "the class", "the game", "my new laptop", "the coffee", "the hotel room",
              "the customer support", "the museum", "the trip", "the tour", "the lecture",
              "the new album", "the delivery", "the apartment", "the meal", "this camera",
              "the play", "the workshop", "the course"),
    "pos_adj": ("amazing", "wonderful", "fantastic", "excellent", "great", "brilliant", "delightful",
                "superb", "lovely", "outstanding", "fun", "impressive", "beautiful", "perfect"),
    "neg_adj": ("awful", "terrible", "horrible", "disappointing", "dreadful", "boring", "annoying",
                "useless", "miserable", "frustrating", "poor", "unpleasant", "a mess", "a disaster"),
    "intens": ("really", "truly", "absolutely", "incredibly", "so", "very", "genuinely"),
    "relative": ("my sister", "my brother", "my friend", "my neighbor", "my cousin", "a coworker",
                 "my mother", "my father", "my roommate"),
}  # fmt: skip


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

NER_FRAMES: tuple[str, ...] = (
    "{PERSON} moved to {GPE} in {DATE:in}.",
    "{PERSON} flew from {GPE} to {GPE} on {DATE:on}.",
    "The meeting with {ORG} starts at {TIME}.",
    "{ORG} hired {CARDINAL} new engineers {DATE}.",
    "About {PERCENT} of {NORP} voters supported the plan.",
    "{PERSON} paid {MONEY} for a used car in {GPE}.",
    "We walked {QUANTITY:dist} along the coast of {LOC}.",
    "She finished {ORDINAL} in {EVENT}.",
    "My grandmother still speaks {LANGUAGE} at home.",
    "{PERSON} wrote a review of {WORK_OF_ART} for {ORG}.",
    "The new rules under {LAW} take effect {DATE:future}.",
    "{PRODUCT} sold {CARDINAL:big} units in {GPE} {DATE}.",
    "Tickets for {EVENT} cost {MONEY}.",
    "{PERSON} visited {FAC} with {CARDINAL:small} friends.",
    "Traffic on {FAC} was stopped for {TIME:dur}.",
    "The temperature in {GPE} reached {QUANTITY:temp} {DATE}.",
    "{NORP} fans celebrated after the match in {GPE}.",
    "The {ORDINAL} chapter of {WORK_OF_ART} is my favorite.",
    "{ORG} announced that profits rose by {PERCENT} {DATE}.",
    "I read that {PERSON} learned {LANGUAGE} in just {DATE:dur}.",
    "Flights from {FAC} to {GPE} were canceled because of the storm.",
    "{PERSON} has lived in {GPE} for {DATE:dur}.",
    "The ship crossed {LOC} in {DATE:dur}.",
    "Our team met {PERSON} from {ORG} at {TIME}.",
    "The court ruled that the company broke {LAW}.",
    "{PERSON}, a {NORP} historian, gave a talk about {EVENT}.",
    "{CARDINAL} people attended {EVENT} {DATE}.",
    "The price of {PRODUCT} dropped to {MONEY}.",
    "You need about {QUANTITY:weight} of flour for this recipe.",
    "{PERSON} translated {WORK_OF_ART} into {LANGUAGE}.",
    "She was the {ORDINAL} person to travel across {LOC} alone.",
    "The library on {FAC} closes at {TIME} {DATE:future}.",
    "Unemployment in {GPE} fell to {PERCENT} {DATE}.",
    "{ORG} will open a new office in {GPE} {DATE:future}.",
    "Members of the {NORP} community gathered in {GPE} on {DATE:on}.",
    "{PERSON} called me at {TIME} to talk about {LAW}.",
    "The bridge is {QUANTITY:dist} long and was finished in {DATE:in}.",
    "According to {ORG}, {PERCENT} of students speak {LANGUAGE}.",
    "{PERSON} bought {CARDINAL:small} tickets to see {WORK_OF_ART} at {FAC}.",
    "Many {NORP} workers went on strike {DATE}.",
    "{EVENT} will be held in {GPE} {DATE:future}.",
    "{PERSON} spent {MONEY} on {PRODUCT}.",
    "It rained for {TIME:dur} during {EVENT}.",
    "Our flight to {GPE} leaves from {FAC} at {TIME}.",
    "The report from {ORG} mentions {LAW} {CARDINAL:small} times.",
    "{PERSON} won the prize for the {ORDINAL} time.",
    "The expedition traveled {QUANTITY:dist} across {LOC}.",
    "Doctor {PERSON:last} works at {ORG} in {GPE}.",
    "{PERSON} and {PERSON} are opening a restaurant in {GPE}.",
    "Most people in {GPE} speak {LANGUAGE} and {LANGUAGE}.",
    "A {NORP} company bought {ORG} for {MONEY:big}.",
    "The museum will show {WORK_OF_ART} until {DATE:on}.",
    "{ORG} recalled {CARDINAL:big} cars {DATE}.",
    "{PERSON} was born in {GPE} on {DATE:on}.",
    "We arrived at {FAC} just after {TIME}.",
    "The storm dropped {QUANTITY:rain} of rain on {GPE}.",
    "Prices rose {PERCENT} after {EVENT}.",
    "{PERSON} finished {ORDINAL} out of {CARDINAL} runners.",
    "The committee discussed {LAW} for {TIME:dur}.",
    "I first saw {WORK_OF_ART} in {GPE} {DATE}.",
    "{PRODUCT} weighs only {QUANTITY:weight}.",
    "The {NORP} team scored {CARDINAL:small} goals in {EVENT}.",
    "My brother works for {ORG} and lives near {FAC}.",
    "The population of {GPE} is about {CARDINAL:big}.",
    "She has been learning {LANGUAGE} since {DATE:in}.",
    "{PERSON} signed {LAW:act} into law {DATE}.",
    "Under {LAW}, every citizen has the right to a fair trial.",
    "The concert at {FAC} starts at {TIME}.",
    "The train from {GPE} was {TIME:dur} late.",
    "{ORG} donated {MONEY} to schools in {GPE}.",
    "Tourists from {GPE} love the beaches of {LOC}.",
    "{PERSON} read {WORK_OF_ART} {CARDINAL:small} times as a child.",
    "About {PERCENT} of the animals in {LOC} are endangered.",
    "{PERSON} became the {ORDINAL} {NORP} astronaut.",
    "The festival lasts {DATE:dur} and ends on {DATE:on}.",
    "{PERSON} ran {QUANTITY:dist} {DATE}.",
    "They sell {PRODUCT} for {MONEY} at the shop on {FAC}.",
    "{PERSON} teaches {LANGUAGE} at {ORG}.",
    "Our guide spoke {LANGUAGE} as we hiked through {LOC}.",
    "The {NORP} embassy in {GPE} will be closed on {DATE:on}.",
    "{EVENT} changed life in {GPE} forever.",
    "{PERSON} met the {NORP} ambassador at {TIME} {DATE}.",
    "Have you ever been to {GPE} or {GPE}?",
    "Did {PERSON} really pay {MONEY} for {PRODUCT}?",
    "Is it true that {ORG} is moving to {GPE}?",
    "How many people still speak {LANGUAGE} in {GPE}?",
    "Please call {PERSON} before {TIME}.",
    "I think {WORK_OF_ART} is better than {WORK_OF_ART}.",
    "Let's meet at {FAC} at {TIME}.",
    "When did {EVENT} take place?",
    "The package weighed {QUANTITY:weight} and cost {MONEY} to ship to {GPE}.",
    "{PERSON} gave {PERCENT} of the prize money to {ORG}.",
    "Our {ORDINAL} stop was {FAC}, and the next one was in {GPE}.",
    "{ORG} sells {PRODUCT} in {CARDINAL} countries.",
    "The {LANGUAGE} version of {WORK_OF_ART} came out in {DATE:year}.",
)
_NER_PREFIXES = (
    "I heard that ", "As far as I know, ", "Apparently, ", "According to the news, ",
    "It turns out that ", "My friend told me that ", "I'm pretty sure that ", "Believe it or not, ",
)  # fmt: skip
# Sentences with no entity at all: SLUE NER sets hold many (their label is None).
PLAIN_SENTENCES: tuple[str, ...] = (
    "I think we should leave a little earlier.", "The coffee here is always too hot.",
    "Can you pass me the salt, please?", "The kids are playing in the garden.",
    "We need to buy more milk and bread.", "He forgot his umbrella again.",
    "The window in the kitchen is broken.", "Please turn off the lights when you leave.",
    "My phone battery is almost empty.", "The dog barked at the mail carrier.",
    "She likes to read before going to sleep.", "The soup needs a little more salt.",
    "I can't find my keys anywhere.", "They painted the fence white.",
    "The bus was late because of the traffic.", "Could you help me carry these boxes?",
    "We should water the plants more often.", "The printer is out of paper.",
    "He plays the guitar in a small band.", "The museum was full of school groups.",
    "Let's take the long way home.", "The meeting ran longer than expected.",
    "I left the book on the kitchen table.", "The river was calm and cold.",
)  # fmt: skip
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

SENTIMENT_FRAMES: dict[str, tuple[str, ...]] = {
    "Positive": (
        "I absolutely loved {thing}.", "{thing} was {pos_adj}.", "{thing} was {intens} {pos_adj}.",
        "Honestly, {thing} was one of the best I've ever had.", "I'm so happy with {thing}.",
        "{thing} exceeded all my expectations.", "I would definitely recommend {thing} to anyone.",
        "Everything about {thing} was just perfect.", "I had a {pos_adj} time, thank you so much.",
        "{thing} made my whole week.", "I really enjoyed {thing}, it was worth every penny.",
        "This is exactly what I was hoping for.", "I'm really impressed with {thing}.",
        "We were thrilled with {thing}.", "{thing} was {pos_adj} and the people were so kind.",
        "It was a wonderful surprise and I loved every minute of it.",
        "I can't stop smiling, {thing} was {pos_adj}.", "I feel great about how {thing} went.",
        "Best decision I've made all year.", "What a {pos_adj} experience, I can't wait to go back.",
        "I'm grateful we chose {thing}, it was {pos_adj}.", "{relative} and I both loved {thing}.",
        "I was pleasantly surprised by {thing}.", "Wow, {thing} was {intens} {pos_adj}.",
    ),
    "Negative": (
        "I really hated {thing}.", "{thing} was {neg_adj}.", "{thing} was {intens} {neg_adj}.",
        "I'm very disappointed with {thing}.", "{thing} was a complete waste of time and money.",
        "I would never recommend {thing} to anyone.", "{thing} was the worst I've ever had.",
        "I regret paying for {thing}.", "Nothing about {thing} worked the way it should.",
        "I'm so frustrated, {thing} was {neg_adj}.", "{thing} ruined my whole day.",
        "I can't believe how bad {thing} was.", "We were really upset about {thing}.",
        "It was a terrible experience and I want my money back.",
        "{thing} was {neg_adj} and the staff were rude.", "I'm never going back there again.",
        "Honestly, {thing} was a huge letdown.", "I didn't enjoy {thing} at all.",
        "{thing} was boring and far too long.", "I'm sick of dealing with {thing}.",
        "{relative} and I both hated {thing}.", "Ugh, {thing} was {intens} {neg_adj}.",
        "I was shocked by how {neg_adj} {thing} was.", "I'm angry that {thing} was so {neg_adj}.",
    ),
    "Neutral": (
        "{thing} starts at eight in the evening.", "I went to {thing} with {relative}.",
        "We talked about {thing} for a while.", "I haven't decided what I think about {thing} yet.",
        "{thing} was okay, nothing special.", "I have to write a report about {thing}.",
        "{thing} takes about two hours.", "{relative} told me about {thing}.",
        "I need to check the schedule for {thing}.", "{thing} was about what I expected.",
        "The meeting has been moved to the afternoon.", "I usually take the bus to work.",
        "The store closes at nine tonight.", "I'm reading a book about the history of trains.",
        "They changed the menu last month.", "I think the package arrives tomorrow.",
        "We'll discuss the budget after lunch.", "It was fine, some parts were good and some were not.",
        "He said he would call back later.", "The weather is supposed to be cloudy today.",
        "I have a few questions about the form.", "I'm not sure, I'll have to think about it.",
        "The tickets are available at the front desk.", "{relative} is picking me up after {thing}.",
    ),
}  # fmt: skip
_SENTIMENT_CONTEXT = (
    "We went out last weekend.", "I finally tried {thing}.", "{relative} invited me along.",
    "We booked it a month ago.", "So here is what happened.", "I went there on my own.",
)  # fmt: skip
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

DIALOG_FRAMES: dict[str, tuple[str, ...]] = {
    "acknowledge": ("Okay.", "Alright.", "Got it.", "Sure.", "Okay, I see.", "Alright, sounds good.",
                    "I understand.", "Perfect.", "Okay, no problem."),
    "answer_agree": ("Yes.", "Yes, that's right.", "Yeah, that's correct.", "Yes, please.",
                     "That's right.", "Correct.", "Yes, it is.", "Exactly.", "Yep, that's me."),
    "answer_dis": ("No.", "No, that's not right.", "Nope.", "No, I don't.", "No, not yet.",
                   "Actually, no.", "No, that's not me.", "No, I haven't."),
    "answer_general": ("My name is {name}.", "It's the checking account.", "It's for my savings account.",
                       "My account number is {digits}.", "The last four digits are {digits4}.",
                       "It was about {amount}.", "I think it was around {amount}.",
                       "The one ending in {digits4}.", "I'm calling from my cell phone."),
    "apology": ("Sorry about that.", "I apologize for the wait.", "I'm so sorry for the trouble.",
                "My apologies.", "Sorry, my mistake.", "I'm sorry to hear that."),
    "backchannel": ("Uh huh.", "Hmm.", "Oh, I see.", "Oh really.", "Uh huh, yeah.", "Oh wow.", "Oh."),
    "disfluency": ("Um.", "Uh, um.", "So, uh.", "Well, um, I.", "I, uh, I mean.", "Er, um, so."),
    "other": ("Oh my goodness.", "Ha, that's funny.", "Oh dear.", "Bless you.", "Whoops.",
              "Hello? Hello?", "Hang on, my dog is barking."),
    "question_check": ("Did you say {digits}?", "So that's the savings account, right?",
                       "You mean the card ending in {digits4}?",
                       "Just to confirm, you want to move {amount}?", "So your name is {name}?",
                       "That was {amount}, correct?"),
    "question_general": ("How can I help you today?", "What's your name, please?",
                         "Can I get your account number?", "What would you like to do today?",
                         "When did you notice the charge?", "Which account would you like to use?",
                         "Do you have your card with you?", "Is there anything else I can help with?",
                         "How much would you like to transfer?"),
    "question_repeat": ("Sorry, could you repeat that?", "Can you say that again?", "What was that?",
                        "Pardon?", "I'm sorry, I didn't catch that.", "Could you say the number again?"),
    "self": ("Let me check that for you.", "Let me see here.", "One moment while I pull that up.",
             "Let me just look at your account.", "Where did I put that card.", "Let me think."),
    "statement_close": ("Have a great day, goodbye.", "Goodbye.", "Take care, bye.",
                        "That's all for today, goodbye.", "Have a nice evening, bye now."),
    "statement_general": ("Your balance is {amount}.", "The transfer takes {days} business days.",
                          "I just moved to a new apartment.", "I have two accounts with you.",
                          "Your new card is in the mail.", "The branch is open until five.",
                          "That payment went through this morning."),
    "statement_instruct": ("Please hold for a moment.", "You'll need to visit a branch with your ID.",
                           "Please enter your pin on the keypad.", "Go ahead and log into the app.",
                           "Please stay on the line.", "Just tap the reset link in the email."),
    "statement_open": ("Hi, this is {first} at Harper Valley Bank.",
                       "Good morning, Harper Valley Bank, {first} speaking.",
                       "Hello, you've reached customer service.", "Hi there, I'm calling about my account."),
    "statement_problem": ("I lost my debit card.", "I can't log into my account.",
                          "There's a charge I don't recognize.", "My card keeps getting declined.",
                          "I forgot my password.", "Someone stole my wallet.",
                          "My paycheck hasn't shown up yet.", "I was charged twice for the same thing."),
    "thanks": ("Thank you.", "Thanks so much.", "Thank you very much.", "I appreciate it.",
               "Thanks for your help.", "Thanks a lot."),
}  # fmt: skip
# Two acts in one turn, in speaking order (first, second); HVB labels are multi-label.
DIALOG_PAIRS: tuple[tuple[str, str], ...] = (
    ("acknowledge", "thanks"), ("apology", "question_repeat"), ("acknowledge", "self"),
    ("thanks", "statement_close"), ("answer_agree", "statement_general"), ("disfluency", "answer_general"),
    ("statement_open", "question_general"), ("statement_problem", "question_general"),
    ("acknowledge", "statement_instruct"), ("answer_dis", "statement_general"),
    ("apology", "statement_instruct"), ("disfluency", "statement_problem"), ("backchannel", "acknowledge"),
    ("answer_agree", "thanks"), ("other", "question_repeat"), ("acknowledge", "question_check"),
    ("statement_general", "question_general"), ("thanks", "acknowledge"), ("disfluency", "question_general"),
    ("answer_dis", "answer_general"), ("statement_problem", "statement_general"),
)  # fmt: skip
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


PASSAGE_FRAMES: tuple[PassageFrame, ...] = (
    PassageFrame(
        sentences=(
            "{who=PERSON:full} is a {job} from {home=GPE}.",
            "{He} traveled to {dest=GPE} {when=DATE} to see {evt=EVENT}.",
            "The trip took {dur=DATE:dur} and cost about {cost=MONEY}.",
            "{He} said the best part was visiting {site=FAC}.",
        ),
        questions=(("Where is {who} from?", "home"), ("Where did {who} travel?", "dest"),
                   ("How long did the trip take?", "dur"), ("How much did the trip cost?", "cost"),
                   ("What was the best part of the trip?", "site"), ("What did {who} go to see?", "evt")),
        summary="{who} traveled from {home} to {dest} to see {evt}.",
        gendered="who", optional=(3,),
    ),
    PassageFrame(
        sentences=(
            "{org=ORG} announced {when=DATE} that it will open a new factory in {city=GPE}.",
            "The factory will cost {cost=MONEY:big} and employ {n=CARDINAL} workers.",
            "Chief executive {ceo=PERSON:full} said production should begin in {start=DATE:in}.",
            "Shares of the company rose {pct=PERCENT} after the news.",
        ),
        questions=(("Where will the new factory be?", "city"), ("How much will the factory cost?", "cost"),
                   ("How many workers will the factory employ?", "n"), ("Who is the chief executive?", "ceo"),
                   ("When should production begin?", "start"), ("How much did the shares rise?", "pct")),
        summary="{org} plans to open a factory in {city} that will employ {n} workers.",
        optional=(3,),
    ),
    PassageFrame(
        sentences=(
            "A strong storm hit {region=LOC} {when=DATE}.",
            "Winds reached {speed=QUANTITY:speed} and more than {rain=QUANTITY:rain} of rain fell in {city=GPE}.",
            "About {n=CARDINAL} homes lost power for {dur=TIME:dur}.",
            "Officials said schools would reopen on {reopen=DATE:on}.",
        ),
        questions=(("How fast were the winds?", "speed"), ("How much rain fell?", "rain"),
                   ("How many homes lost power?", "n"), ("When will schools reopen?", "reopen"),
                   ("Where did the storm hit?", "region"), ("How long were homes without power?", "dur")),
        summary="A storm brought strong winds and heavy rain to {city}, leaving {n} homes without power.",
    ),
    PassageFrame(
        sentences=(
            "{who=PERSON:full} published {title=WORK_OF_ART} in {year=DATE:year}.",
            "The novel tells the story of a {job} who grows up in {place=GPE}.",
            "It was translated into {lang=LANGUAGE} and sold {n=CARDINAL:big} copies.",
            "{He} is now writing {his} {ord=ORDINAL} book.",
        ),
        questions=(("Who wrote {title}?", "who"), ("When was the novel published?", "year"),
                   ("Where does the story take place?", "place"), ("How many copies did it sell?", "n"),
                   ("Which language was the novel translated into?", "lang")),
        summary="{who}'s novel {title} sold {n} copies and was translated into {lang}.",
        gendered="who", optional=(3,),
    ),
    PassageFrame(
        sentences=(
            "The {nat=NORP} team won {evt=EVENT:sport} {when=DATE}.",
            "They won by {score=CARDINAL:small} goals in front of {crowd=CARDINAL:big} fans at {venue=FAC}.",
            "Their captain, {cap=PERSON:full}, scored the winning goal.",
            "It was {his} {ord=ORDINAL} goal for the team.",
        ),
        questions=(("Which team won?", "nat"), ("Where was the game played?", "venue"),
                   ("How many fans watched the game?", "crowd"), ("Who scored the winning goal?", "cap"),
                   ("By how many goals did they win?", "score")),
        summary="The {nat} team won {evt} at {venue}, with {cap} scoring the winning goal.",
        gendered="cap", optional=(3,),
    ),
    PassageFrame(
        sentences=(
            "Lawmakers in {country=GPE:country} passed {law=LAW:act} {when=DATE}.",
            "The law gives every family {money=MONEY} to help pay for child care.",
            "The {party=NORP} party supported it, and about {pct=PERCENT} of voters agree with it.",
            "It will take effect on {start=DATE:on}.",
        ),
        questions=(("Which law was passed?", "law"), ("How much will each family get?", "money"),
                   ("What share of voters agree with the law?", "pct"), ("When will the law take effect?", "start"),
                   ("Where was the law passed?", "country")),
        summary="{country} passed {law}, which gives families {money} for child care.",
    ),
    PassageFrame(
        sentences=(
            "{who=PERSON:first} wakes up at {wake=TIME}.",
            "{He} runs {dist=QUANTITY:dist} before breakfast and then takes the train to {work=ORG}.",
            "After work, {he} studies {lang=LANGUAGE} with a tutor.",
            "{He} plans to move to {dest=GPE} {when=DATE:future}.",
        ),
        questions=(("When does {who} wake up?", "wake"), ("How far does {who} run?", "dist"),
                   ("Where does {who} work?", "work"), ("Which language is {who} studying?", "lang"),
                   ("Where does {who} plan to move?", "dest")),
        summary="{who} works at {work} and is learning {lang} before moving to {dest}.",
        gendered="who",
    ),
    PassageFrame(
        sentences=(
            "A team from {org=ORG} spent {dur=DATE:dur} studying glaciers in {loc=LOC}.",
            "They measured ice that was {thick=QUANTITY:thick} thick.",
            "They found that it had shrunk by {pct=PERCENT} since {year=DATE:year}.",
            "The project was led by {lead=PERSON:full}, a {nat=NORP} scientist.",
        ),
        questions=(("Who led the project?", "lead"), ("Where did the team study glaciers?", "loc"),
                   ("How much had the ice shrunk?", "pct"), ("How long did the team spend there?", "dur"),
                   ("How thick was the ice?", "thick")),
        summary="Researchers from {org} found that glaciers in {loc} have shrunk by {pct} since {year}.",
    ),
    PassageFrame(
        sentences=(
            "{who=PERSON:full} opened a small bakery on {street=FAC} {when=DATE}.",
            "{He} sells about {n=CARDINAL} loaves of bread every morning for {price=MONEY} each.",
            "Most of {his} recipes come from {nat=NORP} cookbooks.",
            "The bakery closes at {close=TIME}.",
        ),
        questions=(("Where is the bakery?", "street"), ("How many loaves are sold every morning?", "n"),
                   ("How much does a loaf cost?", "price"), ("When does the bakery close?", "close"),
                   ("Who opened the bakery?", "who")),
        summary="{who} runs a bakery on {street} that sells {n} loaves every morning.",
        gendered="who", optional=(2, 3),
    ),
)
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
