"""Recipe `heads`: a task head (`spokenlm.heads`) for a trained bundle's closed-set task.

    spokenlm train heads --config configs/heads.yaml
    spokenlm bundle set BUNDLE --head OUT/head          # the bundle then answers the task with it

1. Read every utterance of the task in the train, dev and test splits as the bundle runs: its
   encoder, compressor and transcriber, then its LLM (with LoRA) over the task's own prompt. Keep the
   LLM's last-layer states pooled every way (`spokenlm.heads.POOLINGS`). The states of a split go to
   OUT/states-<split>.safetensors (with the task, the utterance ids and the bundle's fingerprint in
   states-<split>.json) as soon as it is read: a rerun reads only what is missing or changed.
2. For every (pooling, c, threshold) of the grid, fit a head on the train states (L2 logistic
   regression) and score it on dev with the task's SLUE metric. Keep the best; a tie keeps the earlier.
3. Score the kept head on the test splits, beside the bundle's own decoded answers on the same dev
   and test items (greedy), so the report says what the head changes.
4. Write OUT/head (`spokenlm.heads.save_head`), metrics.json, metrics.jsonl and loss.png (the train
   and dev log-loss of each grid point, in grid order).

With `narration_streams`, read prose joins the fit (`narration_items`): the corpus's own dialog acts
are bank calls and its sentiments product reviews, so a head fitted on them alone has never met a line
of narration, and answers one (the demo's LibriVox clips) with acts of a bank call. Whole declarative
sentences of those streams are labelled as a reader of prose would label them: the dialog act
`statement_general`; the sentiment by VADER (a well-kept rule-based sentiment lexicon): `Neutral`
where it finds no polarity, `Negative` or `Positive` where it finds a strong one, and the sentences
between left out rather than guessed (prose that is all Neutral would teach the head that prose is
never anything else). They are read as splits of their own
(`narration-<split>`), added to the train states only; the grid is still picked on the task's own dev
items, and the narration items of each held-out split are scored apart.

No gradient steps and no worker split: the states are one forward per utterance, the fit is
scikit-learn's on 2 cores (seconds). The LLM and its LoRA stay as they are.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from spokenlm.heads import HEAD_LABELS, MULTI_LABEL, POOLINGS, TaskHead, TaskHeadConfig, fit_head, pool_states, save_head

_LABEL_KEY = {"dialog-act": "dialog_acts", "sentiment": "sentiment"}
# prose's labels; a sentiment is VADER's where the sentence is polar (`narration_items`)
NARRATION_LABELS = {"dialog-act": {"dialog_acts": ["statement_general"]}, "sentiment": {"sentiment": "Neutral"}}
NARRATION = "narration-"  # the prefix of the narration items' split names


@dataclass(frozen=True, kw_only=True)
class HeadsRecipeConfig:
    out_dir: str
    bundle: str  # the trained bundle whose LLM reads the prompts; `spokenlm bundle set` gives it the head
    manifest: str | tuple[str, ...]
    task: str = "dialog-act"  # a key of spokenlm.heads.HEAD_LABELS
    train_split: str = "fine-tune"
    dev_split: str = "dev"
    test_splits: tuple[str, ...] = ("test",)
    poolings: tuple[str, ...] = POOLINGS
    cs: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)  # inverse L2 strength over standardised states
    thresholds: tuple[float, ...] = (0.3, 0.4, 0.5)  # multi-label tasks only
    max_duration_s: float = 30.0
    train_utterances: int = 0
    """The first N of the task's train utterances in id-hash order are fitted on (0: all); the
    narration items scale with them (`narration_share`). Reading them is most of the recipe's time."""
    batch_size: int = 16  # utterances per bundle call
    max_new_tokens: int = 32  # for the bundle's decoded answers (the baseline)
    seed: int = 0
    narration_streams: tuple[str, ...] = ()
    """Corpus streams of read prose that carry no label for this task (e.g. ljspeech, harvard): their
    whole declarative sentences join the fit, labelled as prose (`narration_items`); () = none."""
    narration_share: float = 0.2  # narration items per split, as a share of the task's own items there
    narration_max_polarity: float = 0.05  # sentiment: |VADER compound| below this is Neutral prose ...
    narration_min_polarity: float = 0.5  # ... and at least this is Negative / Positive by its sign

    def validate(self) -> None:
        if self.task not in HEAD_LABELS:
            raise ValueError(f"no head for task {self.task!r}; heads answer {sorted(HEAD_LABELS)}")
        if not self.poolings or any(p not in POOLINGS for p in self.poolings):
            raise ValueError(f"poolings must be some of {POOLINGS}, got {list(self.poolings)!r}")
        if not self.cs or not all(isinstance(c, (int, float)) and math.isfinite(c) and c > 0 for c in self.cs):
            raise ValueError(f"cs must be positive finite numbers, at least one, got {list(self.cs)!r}")
        if not self.thresholds or not all(isinstance(t, (int, float)) and 0 < t < 1 for t in self.thresholds):
            raise ValueError(f"thresholds must be numbers in (0, 1), at least one, got {list(self.thresholds)!r}")
        splits = (self.train_split, self.dev_split, *self.test_splits)
        if len(set(splits)) != len(splits):
            raise ValueError(f"train, dev and test splits must differ, got {list(splits)}")
        if not isinstance(self.train_utterances, int) or self.train_utterances < 0:
            raise ValueError(f"train_utterances must be an int >= 0 (0: all), got {self.train_utterances!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {self.batch_size!r}")
        if not self.max_duration_s > 0:
            raise ValueError(f"max_duration_s must be > 0, got {self.max_duration_s}")
        if not (isinstance(self.narration_share, (int, float)) and 0 < self.narration_share <= 1):
            raise ValueError(f"narration_share must be in (0, 1], got {self.narration_share!r}")
        low, high = self.narration_max_polarity, self.narration_min_polarity
        if not (all(isinstance(v, (int, float)) for v in (low, high)) and 0 < low < high <= 1):
            raise ValueError(f"narration_max_polarity and narration_min_polarity must satisfy 0 < max < min <= 1, "
                             f"got {low!r} and {high!r}")  # fmt: skip

    def grid(self) -> list[tuple[str, float, float]]:
        """Every (pooling, c, threshold) in the order tried (a tie keeps the earlier)."""
        thresholds = self.thresholds if self.task in MULTI_LABEL else (0.5,)
        return [(p, float(c), float(t)) for p in self.poolings for c in self.cs for t in thresholds]


def is_declarative(raw_text: str) -> bool:
    """A whole sentence that states something: capitalised, ending in a full stop, at least four words,
    no question, exclamation or quoted speech in it (a fragment of prose or a line of dialogue is not)."""
    text = raw_text.strip()
    return (len(text.split()) >= 4 and text[0].isupper() and text.endswith(".") and text[-2:] != ".."
            and not any(c in text for c in '?!"\u201c\u201d;:'))  # fmt: skip


def narration_items(task: str, utts: list, count: int, *, max_polarity: float, min_polarity: float) -> list:
    """Up to `count` of `utts` (read prose, in the order given) as items of `task`: each a whole
    declarative sentence (`is_declarative`) relabelled as prose is heard (NARRATION_LABELS); a
    sentiment by VADER's compound score c: Neutral where |c| < max_polarity, Negative / Positive by
    its sign where |c| >= min_polarity, and left out between."""
    vader = None
    if task == "sentiment":
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        vader = SentimentIntensityAnalyzer()
    out = []
    for u in utts:
        if len(out) >= count:
            break
        raw = u.labels.get("raw_text") or ""
        if not is_declarative(raw):
            continue
        labels = NARRATION_LABELS[task]
        if vader is not None:
            c = vader.polarity_scores(raw)["compound"]
            if max_polarity <= abs(c) < min_polarity:
                continue
            labels = {"sentiment": "Neutral" if abs(c) < max_polarity else ("Positive" if c > 0 else "Negative")}
        out.append(dataclasses.replace(u, labels={**u.labels, **labels}, tasks=(*u.tasks, task)))
    return out


def label_sets(task: str, labels: list[dict]) -> list[tuple[str, ...]]:
    """Each utterance's labels as a set the head predicts: dialog acts as listed, a sentiment alone."""
    key = _LABEL_KEY[task]
    return [tuple(x[key]) if task in MULTI_LABEL else (x[key],) for x in labels]


def task_score(task: str, labels: list[dict], answers: list[str]) -> dict[str, float]:
    """The task's SLUE scores (`spokenlm.recipes.speechlm.score_task`) of answer texts, as parsed."""
    from spokenlm.recipes.speechlm import Item, score_task
    from spokenlm.tasks import TaskRequest, parse_output

    request = TaskRequest(task=task)
    items = [Item(None, request, x) for x in labels]  # score_task reads the labels only
    return score_task(task, items, [parse_output(request, a) for a in answers])


def head_loss(head: TaskHead, states: Tensor, sets: list[tuple[str, ...]]) -> float:
    """Mean log-loss of a head on states with their label sets: binary per label (multi-label) or
    categorical."""
    with torch.no_grad():
        logits = head(states).double()
    names = head.config.label_names
    if head.config.task in MULTI_LABEL:
        target = torch.tensor([[n in s for n in names] for s in sets], dtype=torch.float64)
        return float(F.binary_cross_entropy_with_logits(logits, target))
    return float(F.cross_entropy(logits, torch.tensor([names.index(s[0]) for s in sets])))


@torch.inference_mode()
def read_states(model, utts, task: str, *, batch_size: int, decode: bool, max_new_tokens: int) -> dict:
    """The bundle's reading of each utterance's `task` prompt: pooled states {pooling: (N, D)}, the
    prompt transcripts, and (decode=True) the bundle's own decoded answers."""
    from spokenlm.lm import GenerationConfig
    from spokenlm.model import request_prompts
    from spokenlm.tasks import TaskRequest
    from spokenlm.train.data import AudioCache

    audio = AudioCache()
    llm = model.llm
    pooled = {p: [] for p in POOLINGS}
    texts, answers = [], []
    generation = GenerationConfig(strategy="greedy", max_new_tokens=max_new_tokens)
    order = sorted(range(len(utts)), key=lambda k: utts[k].duration_s)  # similar lengths together: little padding
    for first in range(0, len(order), batch_size):
        group = [utts[k] for k in order[first : first + batch_size]]
        speech = model.encode_recordings([audio.get(u) for u in group])
        requests = [TaskRequest(task=task)] * len(group)
        prompts = request_prompts(llm, requests, speech.char_times, prompt_texts=speech.prompt_texts)
        hidden, mask = llm.prompt_hidden(prompts, speech.projected, speech.lengths)
        for pooling in POOLINGS:
            pooled[pooling].append(pool_states(hidden, mask, pooling))
        texts += list(speech.prompt_texts or speech.transcripts or [""] * len(group))
        if decode:
            answers += [o.text for o in llm.generate(prompts, speech.projected, speech.lengths, generation)]
    back = sorted(range(len(order)), key=lambda j: order[j])  # row j of the reading order is utts[order[j]]
    return {"states": {p: torch.cat(v)[back] for p, v in pooled.items()}, "texts": [texts[j] for j in back],
            "answers": [answers[j] for j in back] if decode else []}  # fmt: skip


def bundle_fingerprint(path: str | Path) -> str:
    """What a bundle's reading of a prompt depends on: its spokenlm.json (less its heads and
    provenance) and its trained weights. A head given to it later does not change it."""
    import hashlib

    from spokenlm.model import read_bundle_meta

    meta = read_bundle_meta(path)
    meta.pop("provenance", None)
    meta.get("llm", {}).pop("heads", None)
    digest = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    for file in sorted(Path(path).rglob("*.safetensors")):
        if "heads" not in file.relative_to(path).parts:
            digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def _split_states(out: Path, split: str, model, utts, config: HeadsRecipeConfig, decode: bool, fingerprint: str) -> dict:
    """A split's states, from OUT/states-<split>.* when they were read before for the same task and
    bundle and those utterances (or more: a run with fewer train_utterances reads nothing)."""
    from safetensors.torch import load_file, save_file

    tensors, info = out / f"states-{split}.safetensors", out / f"states-{split}.json"
    ids = [u.id for u in utts]
    key = {"task": config.task, "bundle": fingerprint, "poolings": list(POOLINGS)}
    if tensors.is_file() and info.is_file():
        meta = json.loads(info.read_text())
        row = {i: k for k, i in enumerate(meta.get("ids") or [])}
        if {k: meta.get(k) for k in key} == key and all(i in row for i in ids) and (meta["answers"] or not decode):
            rows = torch.tensor([row[i] for i in ids], dtype=torch.long)
            return {"states": {p: v[rows] for p, v in load_file(str(tensors)).items()},
                    "texts": [meta["texts"][k] for k in rows.tolist()],
                    "answers": [meta["answers"][k] for k in rows.tolist()] if meta["answers"] else []}  # fmt: skip
    started = time.monotonic()
    read = read_states(model, utts, config.task, batch_size=config.batch_size, decode=decode,
                       max_new_tokens=config.max_new_tokens)  # fmt: skip
    print(f"heads: read {len(utts)} {split} utterances in {(time.monotonic() - started) / 60:.1f} min", flush=True)
    save_file({p: s.contiguous() for p, s in read["states"].items()}, str(tensors))
    info.write_text(json.dumps({**key, "ids": ids, "texts": read["texts"], "answers": read["answers"]}))
    return read


def train(config: HeadsRecipeConfig) -> dict:
    from spokenlm.model import load_bundle
    from spokenlm.train.data import id_hash_order, read_manifest
    from spokenlm.train.loop import MetricsLog, world_size

    config.validate()
    if world_size() > 1:
        raise ValueError("heads fits with scikit-learn: run it without --workers")
    started = time.monotonic()
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    splits = (config.train_split, config.dev_split, *config.test_splits)
    every = read_manifest(config.manifest, splits=splits, max_duration_s=config.max_duration_s)  # the prose too
    utts = [u for u in every if config.task in u.tasks]
    by_split = {s: id_hash_order([u for u in utts if u.split == s]) for s in splits}
    if config.train_utterances:
        by_split[config.train_split] = by_split[config.train_split][: config.train_utterances]
    for split in (config.train_split, config.dev_split):
        if not by_split[split]:
            raise ValueError(f"{config.manifest}: no {config.task} utterances in {split!r}")
    if config.narration_streams:
        prose = [u for u in every if u.stream in config.narration_streams and config.task not in u.tasks]
        for s in splits:
            count = round(config.narration_share * len(by_split[s]))
            by_split[NARRATION + s] = narration_items(config.task, id_hash_order([u for u in prose if u.split == s]),
                                                      count, max_polarity=config.narration_max_polarity,
                                                      min_polarity=config.narration_min_polarity)  # fmt: skip
        if not by_split[NARRATION + config.train_split]:
            raise ValueError(f"{config.manifest}: no declarative sentences of streams {list(config.narration_streams)} "
                             f"in {config.train_split!r} to read as narration")  # fmt: skip
    model = load_bundle(config.bundle).eval()
    if config.task not in model.info.tasks:
        raise ValueError(f"{config.bundle} does not do {config.task!r}; its tasks are {list(model.info.tasks)}")
    model.llm.heads = {}  # the states and the baseline answers are the LLM's own, whatever heads the bundle has
    fingerprint = bundle_fingerprint(config.bundle)
    # the narration splits are not decoded: the LLM's own answer is the baseline of the task's items only
    read = {s: _split_states(out, s, model, group, config, decode=s in splits and s != config.train_split,
                             fingerprint=fingerprint)
            for s, group in by_split.items() if group}  # fmt: skip
    read_minutes = (time.monotonic() - started) / 60
    labels = {s: [u.labels for u in by_split[s]] for s in read}
    sets = {s: label_sets(config.task, labels[s]) for s in read}
    train_states = {p: torch.cat([read[s]["states"][p] for s in (config.train_split, NARRATION + config.train_split)
                                  if s in read]) for p in config.poolings}  # fmt: skip
    train_sets = sets[config.train_split] + sets.get(NARRATION + config.train_split, [])
    headline = "accuracy" if config.task == "dialog-act" else "macro_f1"

    (out / "metrics.jsonl").unlink(missing_ok=True)  # the grid is refitted whole on every run
    metrics, grid = MetricsLog(out), []
    fitted: dict[tuple[str, float], TaskHead] = {}  # the threshold only reads the fit: one fit per (pooling, c)
    for k, (pooling, c, threshold) in enumerate(config.grid()):
        head_config = TaskHeadConfig(task=config.task, model_dim=model.llm.model_dim, pooling=pooling, threshold=threshold)
        if (pooling, c) not in fitted:
            fitted[pooling, c] = fit_head(head_config, train_states[pooling], train_sets, c=c, seed=config.seed)
        head = TaskHead(head_config)
        head.linear.load_state_dict(fitted[pooling, c].linear.state_dict())
        head.eval()
        dev = task_score(config.task, labels[config.dev_split], head.answer(read[config.dev_split]["states"][pooling]))
        row = {"pooling": pooling, "c": c, "threshold": threshold, "dev": dev,
               "train_loss": head_loss(head, train_states[pooling], train_sets),
               "dev_loss": head_loss(head, read[config.dev_split]["states"][pooling], sets[config.dev_split])}  # fmt: skip
        grid.append((row, head))
        print(f"heads: {pooling} c={c} threshold={threshold}: dev {headline} {dev[headline]:.1f}", flush=True)
        metrics.log(k, loss=row["train_loss"], val_loss=row["dev_loss"], **{f"dev_{headline}": dev[headline]})
    best_row, best = max(grid, key=lambda rh: (rh[0]["dev"][headline], -grid.index(rh)))
    pooling = best.config.pooling

    def scores(split: str) -> dict:
        return {"head": task_score(config.task, labels[split], best.answer(read[split]["states"][pooling])),
                "decoded": task_score(config.task, labels[split], read[split]["answers"]),
                "items": len(labels[split])}  # fmt: skip

    held_out = {s: scores(s) for s in (config.dev_split, *config.test_splits) if s in read}
    # narration: how often the head answers a held-out line of prose as prose is labelled
    narration = {s: {"head": task_score(config.task, labels[p], best.answer(read[p]["states"][pooling])),
                     "items": len(labels[p])}
                 for s in (config.dev_split, *config.test_splits) if (p := NARRATION + s) in read}  # fmt: skip
    summary = {
        "task": config.task, "bundle": config.bundle, "headline": headline,
        "pick": {k: best_row[k] for k in ("pooling", "c", "threshold")},
        "splits": held_out,
        "train_items": len(labels[config.train_split]),
        "narration": {"train_items": len(labels.get(NARRATION + config.train_split, [])), "splits": narration},
        "grid": [row for row, _ in grid],
        "read_minutes": round(read_minutes, 2),
        "wall_minutes": round((time.monotonic() - started) / 60, 2),
        "config": dataclasses.asdict(config),
    }  # fmt: skip
    save_head(best, out / "head", metrics={"pick": summary["pick"], "splits": held_out, "bundle": config.bundle})
    metrics.write_summary(summary)
    metrics.plot(title=f"heads: {config.task} (grid points in order)")
    return summary
