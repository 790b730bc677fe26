"""Recipe `translator`: the truecase table a bundle's Apertium translator reads (`spokenlm.translator`).

    spokenlm train translator --config configs/translator.yaml
    spokenlm bundle set BUNDLE --translator OUT/translator   # translate requests are then answered by it

1. Read the cased English sentences of `text` (the first tab-separated column: the Tatoeba pairs'
   English side) and drop every one whose normalized text is a sentence of the manifests' held-out
   splits (`held_out_splits`): the table never sees a sentence it is scored on.
2. Count the table (`Truecaser.fit`) and write OUT/translator (translator.json, truecase.json).
3. Score it: BLEU (sacrebleu, every reference) of Apertium's translation of the reference transcripts
   of the dev and test translate items, with the table and without it (the transcript as it is, a
   "." at its end): what the table is worth apart from recognition errors. `spokenlm bench default`
   scores the bundle, which translates its own transcripts. OUT/metrics.json has both, and examples.

Nothing is trained by gradient: a second of counting, seconds of Apertium; no checkpoint, no loss
curve, no worker split.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

from spokenlm.translator import Translator, TranslatorConfig, Truecaser, save_translator


@dataclass(frozen=True, kw_only=True)
class TranslatorRecipeConfig:
    out_dir: str
    manifest: str | tuple[str, ...]  # its held-out splits' sentences stay out of the table; its translate items are scored
    text: str = "../shared/data/text/tatoeba_eng_spa.tsv"  # cased English sentences, the first tab column
    translator: TranslatorConfig = TranslatorConfig()
    min_count: int = 2
    held_out_splits: tuple[str, ...] = ("dev", "test")
    score_splits: tuple[str, ...] = ("dev", "test")
    examples: int = 10

    def validate(self) -> None:
        self.translator.validate()
        if not (isinstance(self.min_count, int) and self.min_count >= 1):
            raise ValueError(f"min_count must be an int >= 1, got {self.min_count!r}")
        if not set(self.score_splits) <= set(self.held_out_splits):
            raise ValueError(f"score_splits {list(self.score_splits)} must be held out of the table "
                             f"(held_out_splits {list(self.held_out_splits)})")  # fmt: skip
        if not Path(self.text).is_file():
            raise ValueError(f"text {self.text}: no such file")


def train(config: TranslatorRecipeConfig) -> dict:
    from spokenlm.data.text import normalize
    from spokenlm.recipes.speechlm import heldout_items, score_task
    from spokenlm.tasks import Translation
    from spokenlm.train.data import read_manifest

    config.validate()
    t0 = time.perf_counter()
    manifests = [config.manifest] if isinstance(config.manifest, str) else list(config.manifest)
    utts = read_manifest(manifests)
    held = {normalize(u.labels.get("text", "")) for u in utts if u.split in config.held_out_splits}
    with open(config.text, encoding="utf-8") as f:
        english = [line.split("\t", 1)[0].strip() for line in f]
    kept = [s for s in english if s and normalize(s) not in held]
    truecase = Truecaser.fit(kept, min_count=config.min_count)
    out = save_translator(Path(config.out_dir) / "translator", config.translator, truecase)

    with_table, plain = Translator(config.translator, truecase), Translator(config.translator)
    scores: dict[str, dict] = {}
    for split in config.score_splits:
        items = [i for i in heldout_items([u for u in utts if u.split == split], 0).get("translate", [])
                 if i.request.target_lang == config.translator.target_lang]  # fmt: skip
        if not items:
            continue
        sources = [i.labels["text"] for i in items]
        translated = with_table.translate(sources)

        def bleu(texts: list[str]) -> float:  # the speechlm recipe's metric: sacrebleu over every reference
            return score_task("translate", items, [Translation(text=t, target_lang=config.translator.target_lang) for t in texts])["bleu"]

        scores[split] = {
            "items": len(items),
            "bleu": bleu(translated),
            "bleu_without_truecase": bleu(plain.translate(sources)),
            "examples": [{"transcript": s, "translation": t, "reference": i.labels["translation"]}
                         for s, t, i in list(zip(sources, translated, items))[: config.examples]],  # fmt: skip
        }
    if not scores:
        raise ValueError(f"{manifests}: no translate items in {list(config.score_splits)}")
    metrics = {
        "sentences": len(english), "sentences_held_out": len(english) - len(kept), "truecase_words": len(truecase.table),
        "translator": dataclasses.asdict(config.translator), "scores": scores,
        "wall_s": round(time.perf_counter() - t0, 1), "out": str(out),
    }  # fmt: skip
    (Path(config.out_dir) / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
    return metrics
