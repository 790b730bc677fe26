"""Translation of a bundle's transcript by Apertium, a rule-based MT system (Debian: apertium, apertium-eng-spa).

Why not the LLM: SmolLM2-135M does not translate. After LoRA training on ~8,000 spoken en->es pairs
its test BLEU is 3.7 (the zero-shot cascade's 2.8); Apertium's eng-spa pair over the same sentences'
reference transcripts scores ~26 (bench/README.md). A bundle with a translator answers translate
requests into the translator's language from its prompt transcript (`spokenlm.model.decode_speech`),
as it answers ASR from that transcript; other target languages are still decoded by the LLM.

Our transcripts are lower case without punctuation (SLUE's normalization); Apertium reads case (a
capitalised word is a name it leaves alone, "i" is not "I") and BLEU scores it. So each transcript is
restored before translation: every word in its usual case (`Truecaser`: a table counted from cased
English text, "tom" -> "Tom", "i'm" -> "I'm"), "?" after a question (its first word an auxiliary
verb or a wh-word) else "."; and the translation gets its first letter capitalised and "¿" before
a question. Apertium runs as a subprocess (`apertium -u PAIR`, one call per batch, one line per
transcript): its Python bindings on PyPI wrap the same programs and are unmaintained.

Not here: where the table comes from (the `translator` recipe) and how a bundle keeps it
(`spokenlm.model.set_bundle_translator`).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

TRANSLATOR_JSON = "translator.json"
TRUECASE_JSON = "truecase.json"

# First words that make a sentence a question. Not "don't", "let's": they open imperatives.
QUESTION_WORDS = frozenset(
    "what where when why who whom whose which how is are am was were do does did can could will would shall should "
    "may might must have has had isn't aren't wasn't weren't doesn't didn't can't couldn't won't wouldn't shouldn't "
    "haven't hasn't hadn't mustn't what's where's who's how's when's why's whats wheres".split()
)
_WORD = re.compile(r"[A-Za-z][A-Za-z']*")
_MARKS = re.compile(r"(?<!\S)[*#@]")  # Apertium's marks on a word it could not analyse, transfer or generate


class TranslatorError(RuntimeError):
    """The translator cannot run: Apertium or its language pair is missing, or it failed."""


@dataclass(frozen=True, kw_only=True)
class TranslatorConfig:
    """A translator directory's translator.json."""

    engine: str = "apertium"
    pair: str = "eng-spa"  # an Apertium mode: `apertium -l` lists the installed ones
    target_lang: str = "es"  # the TaskRequest.target_lang it answers (a key of spokenlm.tasks.TARGET_LANGUAGES)
    timeout_s: float = 60.0  # one Apertium call (a batch of transcripts)

    def validate(self) -> None:
        from spokenlm.tasks import TARGET_LANGUAGES

        if self.engine != "apertium":
            raise ValueError(f"unknown translator engine {self.engine!r}; expected 'apertium'")
        if not (isinstance(self.pair, str) and re.fullmatch(r"[a-z]{2,3}-[a-z]{2,3}(_[A-Za-z]+)?", self.pair)):
            raise ValueError(f"pair must name an Apertium mode such as 'eng-spa', got {self.pair!r}")
        if self.target_lang not in TARGET_LANGUAGES:
            raise ValueError(f"target_lang must be one of {', '.join(TARGET_LANGUAGES)}, got {self.target_lang!r}")
        if not (isinstance(self.timeout_s, (int, float)) and 0 < self.timeout_s <= 3600):
            raise ValueError(f"timeout_s must be in (0, 3600] seconds, got {self.timeout_s!r}")


class Truecaser:
    """Lower-case words -> their usual case in running text (only those not usually lower case)."""

    def __init__(self, table: dict[str, str] | None = None) -> None:
        self.table = dict(table or {})

    @classmethod
    def fit(cls, sentences: Iterable[str], *, min_count: int = 2) -> Truecaser:
        """Count each word's forms after the first word of cased sentences (the first is capitalised
        whatever it is); keep the most common form where it is not the lower-case one and was seen at
        least `min_count` times."""
        forms: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        for sentence in sentences:
            for word in _WORD.findall(sentence)[1:]:
                forms[word.lower()][word] += 1
        table = {}
        for lower, counts in forms.items():
            form, n = counts.most_common(1)[0]
            if form != lower and n >= min_count:
                table[lower] = form
        return cls(table)

    def __call__(self, text: str) -> str:
        return " ".join(self.table.get(w, w) for w in text.split())

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(dict(sorted(self.table.items())), indent=0, ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Truecaser:
        try:
            table = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: not a truecase table: {e}") from e
        if not isinstance(table, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in table.items()):
            raise ValueError(f"{path}: a truecase table maps lower-case words to strings")
        return cls(table)


def is_question(text: str) -> bool:
    """Whether a normalized transcript reads as a question: its first word is in QUESTION_WORDS."""
    words = text.split()
    return bool(words) and words[0].lower() in QUESTION_WORDS


def source_sentence(text: str, truecase: Truecaser) -> str:
    """A normalized transcript as Apertium should read it: truecased, "?" or "." at its end."""
    return truecase(text) + ("?" if is_question(text) else ".")


def finish_translation(text: str, question: bool) -> str:
    """Apertium's output as a sentence: its marks dropped, spaces single, first letter capitalised, "¿" opening a question."""
    text = " ".join(_MARKS.sub("", text).split())
    text = re.sub(r" ([.,?!;:])", r"\1", text)
    if not text:
        return text
    text = text[0].upper() + text[1:]
    if question and not text.startswith("¿"):
        text = "¿" + text
    return text


class Translator:
    """Apertium over restored transcripts; see the module docstring."""

    def __init__(self, config: TranslatorConfig, truecase: Truecaser | None = None) -> None:
        config.validate()
        self.config, self.truecase = config, truecase or Truecaser()
        if shutil.which("apertium") is None:
            raise TranslatorError(f"this translator runs Apertium, which is not installed: apt-get install apertium "
                                  f"apertium-{config.pair.split('_')[0]}")  # fmt: skip
        modes = subprocess.run(["apertium", "-l"], capture_output=True, text=True, timeout=30).stdout.split()
        if config.pair not in modes:
            raise TranslatorError(f"Apertium has no {config.pair!r} pair (installed: {', '.join(modes) or 'none'}): "
                                  f"apt-get install apertium-{config.pair.split('_')[0]}")  # fmt: skip

    def translate(self, texts: Sequence[str]) -> list[str]:
        """Normalized transcripts -> translations, one Apertium call for all; an empty transcript gives ""."""
        todo = [i for i, t in enumerate(texts) if t.split()]
        out = [""] * len(texts)
        if not todo:
            return out
        # one transcript per line: a newline inside one would shift every later answer
        lines = [source_sentence(" ".join(texts[i].split()), self.truecase) for i in todo]
        try:
            done = subprocess.run(["apertium", "-u", self.config.pair], input="\n".join(lines) + "\n",
                                  capture_output=True, text=True, timeout=self.config.timeout_s)  # fmt: skip
        except subprocess.TimeoutExpired as e:
            raise TranslatorError(f"Apertium took over {self.config.timeout_s:g} s for {len(todo)} transcripts") from e
        except OSError as e:  # removed or broken since the check in __init__
            raise TranslatorError(f"Apertium could not run: {e}") from e
        if done.returncode != 0:
            raise TranslatorError(f"Apertium failed (exit {done.returncode}): {done.stderr.strip()[:300]}")
        translated = done.stdout.split("\n")
        if translated and translated[-1] == "":
            translated.pop()
        if len(translated) != len(lines):
            raise TranslatorError(f"Apertium gave {len(translated)} lines for {len(lines)} transcripts")
        for i, line in zip(todo, translated):
            out[i] = finish_translation(line, is_question(texts[i]))
        return out


def save_translator(out_dir: str | Path, config: TranslatorConfig, truecase: Truecaser) -> Path:
    """Write a translator directory: translator.json and truecase.json."""
    config.validate()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / TRANSLATOR_JSON).write_text(json.dumps(dataclasses.asdict(config), indent=2) + "\n")
    truecase.save(out / TRUECASE_JSON)
    return out


def read_translator_config(path: str | Path) -> TranslatorConfig:
    file = Path(path) / TRANSLATOR_JSON
    try:
        data = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{file}: not a translator config: {e}") from e
    fields = {f.name for f in dataclasses.fields(TranslatorConfig)}
    if not isinstance(data, dict) or set(data) - fields:
        raise ValueError(f"{file}: unknown keys {sorted(set(data) - fields) if isinstance(data, dict) else data!r}; "
                         f"expected some of {sorted(fields)}")  # fmt: skip
    config = TranslatorConfig(**data)
    config.validate()
    return config


def load_translator(path: str | Path) -> Translator:
    """A translator directory (`save_translator`), ready: Apertium and its pair checked."""
    return Translator(read_translator_config(path), Truecaser.load(Path(path) / TRUECASE_JSON))
