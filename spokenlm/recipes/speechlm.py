"""Recipe `speechlm`: the adapter and LoRA (or the whole LLM) trained on multitask speech prompts.

    spokenlm train speechlm --config configs/speechlm.yaml        # adapter + LoRA, frozen LLM
    spokenlm train speechlm --config configs/speechlm_full.yaml   # adapter + every LLM weight

Speech-LLaMA (Wu et al., 2023, §2.2–2.3): a frozen encoder and CTC compressor turn speech into a few
tokens per second; an MLP adapter maps them into the LLM's embedding space, where they replace the
prompt's `<audio>` marker; only the adapter and LoRA (Hu et al., 2021) on the LLM's projections learn.
`mode: full` trains every LLM weight instead of LoRA, the comparison DESIGN.md §4 asks for.

1. `build_speechlm(model_config(config))`: the frozen parts loaded (`encoder_dir` or the pinned
   `encoder_base`; `compressor_dir`: the ctc recipe's output), the LLM (`llm_dir`: the text-lm
   recipe's, a .gguf file, or `llm_base`) with LoRA (mode "lora") or unfrozen (mode "full"), a
   fresh adapter; the bundle records that SpeechLMConfig.
2. The encoder runs ONCE per utterance, not per step: it is frozen, so its output never changes. Its
   features (cut into chunks as at inference) go to the feature cache (spokenlm/train/features.py,
   shared with the ctc recipe: a Whisper encoder's features from that stage are reused), and the
   frozen compressor turns them into (N, D) speech tokens and CTC transcripts, as
   `SpeechLM.encode_recordings` joins chunks; those are kept too (`TokenCache`, keyed by the features
   and the compressor), so a restarted run reads them instead of compressing 20 h again (~10 min).
   On this CPU that removes the encoder from the training step entirely (it would otherwise cost more
   than the small LLM), and the float16 rounding of the features is far below what the adapter can
   resolve. With N workers each encodes 1/N of them.
   Optionally the prompt is hybrid (`prompt_transcript`: the CTC transcript as text after the speech),
   and the first `text_warmup_steps` train the LoRA on text alone (noisy label transcripts, no speech).
3. Each step draws `batch_size` (utterance, task) pairs: a task by `task_weights` among the tasks the
   train split has, then an utterance that carries it; prompt `build_prompt(TaskRequest)`, target
   `TASKS[task].target(labels)`, loss `SpeechLLM.loss` (target tokens only). With `bucket_batches`
   K > 1, K batches are drawn at once and regrouped by duration (`bucketed_batches`); `max_batch_s`
   cuts batches of long items smaller, bounding the memory of a step.
4. Every `eval_every` steps: teacher-forced loss and greedy-decoding metrics on up to
   `dev_items_per_task` items per task of `dev_split`; checkpoint (resumable).
5. At the end: the same evaluation on all of `dev_split` and each of `test_splits` (OUT/eval_<split>.json,
   SLUE metric definitions, a few examples), then OUT/bundle/ (`spokenlm run --model OUT/bundle`),
   metrics.json and loss.png.

Metrics (DESIGN.md §5): ASR WER (slue-toolkit: summed edits / reference words), NER micro-F1 on the
combined tags (and raw), sentiment macro-F1, dialog-act accuracy (exact set match) and macro-F1,
en→es BLEU (sacrebleu, every reference translation), QA exact match / token F1 (SQuAD), summary ROUGE-L.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
import string
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from spokenlm.tasks import TASK_NAMES, TASKS, TaskRequest, build_prompt, parse_output
from spokenlm.train.config import to_dict
from spokenlm.train.data import AudioCache, Utterance, id_hash_order, read_manifest
from spokenlm.train.features import FeatureCache, TokenCache
from spokenlm.train.loop import (
    Checkpointer,
    MetricsLog,
    OptimConfig,
    WallClock,
    barrier,
    clip_and_step,
    is_main,
    lr_now,
    mean_across_workers,
    rank,
    world_size,
    wrap_ddp,
)

MODES = ("lora", "full")
LLAMA_LINEAR_LAYERS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True, kw_only=True)
class SpeechLMTrainConfig:
    out_dir: str
    manifest: str | tuple[str, ...]  # the corpus manifest.jsonl (`spokenlm data synth`), or several
    compressor_dir: str  # frozen: a save_compressor dir (the ctc recipe's OUT/compressor)
    compressor_overrides: dict = field(default_factory=dict)
    """Compressor config fields that keep its weights, e.g. {mode: blank_removal}: the same CTC head,
    one token per emitted character instead of one per run (the compressor ablation)."""
    encoder_dir: str | None = None  # frozen: any dir load_encoder reads (the ctc recipe's OUT/encoder, a Whisper dir)
    encoder_base: str | None = None  # or a pinned base (spokenlm/bases.py KNOWN_BASES: "whisper-tiny.en")
    encoder_overrides: dict = field(default_factory=dict)  # config fields that keep the weights, e.g. {bf16: true}
    llm_dir: str | None = None  # an HF causal-LM dir with its tokenizer (text-lm's OUT/llm) or a .gguf file
    llm_base: str | None = None  # or a pinned base ("smollm2-135m-instruct")
    feature_cache: str | None = None  # root of the encoder feature cache (default <cache>/features, shared with ctc)
    token_cache: str | None = None  # root of the speech-token cache (default <cache>/tokens; TokenCache)
    init_from: str | None = None
    """A speechlm bundle (an earlier run's OUT/bundle, a committed part) whose adapter and LoRA weights
    this run starts from instead of fresh ones, so training goes on across sessions and machines; its
    adapter and LoRA shapes must be this config's. A checkpoint in out_dir still wins (a resume)."""

    prompt_transcript: bool = False
    """The hybrid prompt: the CTC compressor's greedy transcript goes into the prompt as text after the
    speech (`build_prompt(request, transcript)`), as DeSTA2 gives its LLM the recognizer's words."""

    transcriber: str | None = None
    """The transcriber recipe's OUT (or a transcriber.json): the bundle this run writes also reads
    each chunk with the Whisper base, and its prompt takes whichever reading the CTC head and
    Whisper's decoder jointly prefer (`spokenlm.transcriber`).
    Training and this recipe's eval_*.json read the CTC transcript; `spokenlm bench default` scores
    the bundle as it runs. Needs prompt_transcript."""

    asr_from_transcript: bool = False
    """The bundle answers ASR requests with its prompt's transcript instead of the LLM's rewrite of
    it (measured on held-out splits: the rewrite adds errors). Needs prompt_transcript."""

    train_transcript_lms: str | None = None
    """With a compressor that reads its transcript with a word LM (the ctc-lm recipe's OUT/compressor),
    the ctc-lm run's OUT/folds: each train utterance's prompt transcript is then read with the fold LM
    that never saw its sentence (`spokenlm.recipes.ctc_lm.transcript_fold`), so training transcripts
    are as wrong as held-out ones. Dev, test and the bundle use the compressor's own LM."""

    text_warmup_steps: int = 0
    """Steps of text-only warm-up before any speech: the prompt carries no speech tokens and, as its
    transcript, the label text with CTC-like character errors (`ctc_like_noise`); needs prompt_transcript."""

    warmup_cer: float = 0.2  # character error rate of that synthetic noise (the CTC stage's dev CER, roughly)

    mode: Literal["lora", "full"] = "lora"  # "lora": the LLM stays frozen; "full": every LLM weight trains
    lora_rank: int = 16
    lora_alpha: int = 32  # LoRA scale is alpha / rank
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = LLAMA_LINEAR_LAYERS  # every Linear of a Llama/Qwen block (QLoRA, §4)
    llm_lr_scale: float = 1.0  # mode "full": LLM weights learn at optim.lr * this (the adapter starts from scratch)

    adapter_kind: Literal["mlp", "linear"] = "mlp"
    adapter_hidden_dim: int = 512
    max_chunk_s: float = 30.0  # longer recordings are cut at pauses, as at inference (SpeechLM.encode_recordings)

    train_split: str = "fine-tune"
    dev_split: str = "dev"  # evaluated every eval_every steps (a sample) and at the end (all of it)
    test_splits: tuple[str, ...] = ("test",)  # evaluated at the end; a split absent from the manifest is skipped
    task_weights: dict = field(default_factory=dict)  # task -> sampling weight; unlisted tasks weigh 1, 0 drops one
    max_duration_s: float = 60.0  # longer training utterances are left out (context length of a small LLM)

    batch_size: int = 16  # (utterance, task) pairs per step per worker
    bucket_batches: int = 1
    """Length bucketing: draw this many batches' items at once, sort them by duration and cut them into
    batches (run in random order), so a 60-s passage is padded with other long items, not 15 short
    ones. Every batch holds up to `batch_size` items drawn as before; 1 = no bucketing."""
    max_batch_s: float = 0.0
    """With bucketing: a batch holds at most this many padded seconds of speech (items x its longest
    item), so a bucket of long passages is cut into smaller batches and a step's activation memory is
    bounded; 0 = no cap (every batch holds `batch_size` items)."""
    bf16: bool = False  # bfloat16 autocast for the training forward (FEASIBILITY: 2.3x faster LoRA here); eval stays fp32
    bundle_dtype: Literal["float32", "bfloat16"] = "float32"  # how the bundle stores compressor, adapter and LoRA
    gradient_checkpointing: bool = False
    """Recompute each LLM layer's activations in the backward pass instead of holding them (HF's
    gradient checkpointing, non-reentrant): a step of 16 x ~350 positions holds ~1/30 of the
    activations for ~1/3 more compute. The same gradients either way."""
    log_every: int = 20  # steps between logged (mean) training losses
    eval_every: int = 250
    checkpoint_every: int = 0
    """Steps between checkpoints taken without an evaluation (0: only at each evaluation and at the
    end). A long run with a rare eval_every loses no more than this many steps when it is killed."""
    dev_items_per_task: int = 32  # per task, for the periodic dev evaluation
    first_eval: bool = True
    """Evaluate the untrained adapter at step 0 (the baseline the dev curve is read against). It
    decodes every dev item to max_new_tokens (an untrained model rarely stops) and counts in
    max_minutes: a short run (an ablation arm) can leave it out."""
    final_items_per_task: int = 0  # per task, for the final evaluation; 0 = every item
    eval_batch_size: int = 32
    max_new_tokens: int = 128  # greedy decoding limit in evaluation
    num_examples: int = 3  # per task, written into eval_<split>.json
    encode_batch_size: int = 16  # recordings per encoder call while filling the token cache
    seed: int = 0
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, warmup_steps=200, max_steps=6000))

    def validate(self) -> None:
        for name in ("out_dir", "manifest", "compressor_dir"):
            if not getattr(self, name):
                raise ValueError(f"speechlm needs {name}")
        from spokenlm.bases import KNOWN_BASES

        for part in ("encoder", "llm"):
            given = [f"{part}_{k}" for k in ("dir", "base") if getattr(self, f"{part}_{k}")]
            if len(given) != 1:
                raise ValueError(f"speechlm needs exactly one of {part}_dir and {part}_base, got {given or 'none'}")
            base = getattr(self, f"{part}_base")
            if base is not None and base not in KNOWN_BASES:
                raise ValueError(f"unknown {part}_base {base!r}; expected one of {', '.join(KNOWN_BASES)}")
        if self.text_warmup_steps < 0 or not 0.0 <= self.warmup_cer < 1.0:
            raise ValueError(f"need text_warmup_steps >= 0 and warmup_cer in [0, 1), got {self.text_warmup_steps}, {self.warmup_cer}")
        for name in ("transcriber", "asr_from_transcript"):
            if getattr(self, name) and not self.prompt_transcript:
                raise ValueError(f"{name} needs prompt_transcript: it is about the prompt's transcript")
        if self.train_transcript_lms and not self.prompt_transcript:
            raise ValueError("train_transcript_lms needs prompt_transcript: it changes the prompt's transcripts")
        if self.text_warmup_steps and not self.prompt_transcript:
            raise ValueError("text_warmup_steps needs prompt_transcript: the warm-up prompt is the transcript alone")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.mode == "lora" and (self.lora_rank < 1 or self.lora_alpha <= 0 or not self.lora_targets):
            raise ValueError(
                f"lora mode needs lora_rank >= 1, lora_alpha > 0 and lora_targets, got "
                f"{self.lora_rank}, {self.lora_alpha}, {list(self.lora_targets)}"
            )
        if not 0 <= self.lora_dropout < 1 or not self.llm_lr_scale > 0:
            raise ValueError(
                f"need 0 <= lora_dropout < 1 and llm_lr_scale > 0, got {self.lora_dropout}, {self.llm_lr_scale}"
            )
        if self.adapter_kind not in ("mlp", "linear") or self.adapter_hidden_dim < 1:
            raise ValueError(
                f"adapter_kind must be mlp or linear with adapter_hidden_dim >= 1, "
                f"got {self.adapter_kind!r}, {self.adapter_hidden_dim}"
            )
        unknown = sorted(set(self.task_weights) - set(TASK_NAMES))
        if unknown:
            raise ValueError(f"task_weights names unknown task(s) {unknown}; expected some of {', '.join(TASK_NAMES)}")
        bad = {k: v for k, v in self.task_weights.items() if not (isinstance(v, (int, float)) and v >= 0)}
        if bad:
            raise ValueError(f"task_weights must be numbers >= 0, got {bad}")
        if min(self.batch_size, self.bucket_batches, self.log_every, self.eval_every, self.eval_batch_size,
               self.max_new_tokens, self.encode_batch_size) < 1:  # fmt: skip
            raise ValueError(
                "batch_size, bucket_batches, log_every, eval_every, eval_batch_size, max_new_tokens and "
                "encode_batch_size must be >= 1"
            )
        if not (isinstance(self.checkpoint_every, int) and self.checkpoint_every >= 0):
            raise ValueError(f"checkpoint_every must be an int >= 0 (0: only with each evaluation), got {self.checkpoint_every!r}")
        if self.dev_items_per_task < 0 or self.final_items_per_task < 0 or self.num_examples < 0:
            raise ValueError("dev_items_per_task, final_items_per_task and num_examples must be >= 0")
        if self.bundle_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"bundle_dtype must be float32 or bfloat16, got {self.bundle_dtype!r}")
        if self.max_batch_s < 0:
            raise ValueError(f"max_batch_s must be >= 0 (0: no cap), got {self.max_batch_s}")
        if not self.max_duration_s > 0 or not 1.0 <= self.max_chunk_s <= 600.0:
            raise ValueError(
                f"need max_duration_s > 0 and max_chunk_s in [1, 600], got {self.max_duration_s}, {self.max_chunk_s}"
            )
        self.optim.validate()


# --- (utterance, task) items ---------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    """One prompt to train or score: an utterance, the request asked of it, and its labels."""

    utt: Utterance
    request: TaskRequest
    labels: dict  # the utterance's labels; for qa, "question"/"answer" are this item's pair

    @property
    def target(self) -> str:
        return TASKS[self.request.task].target(self.labels)


def items_of(utt: Utterance, task: str) -> list[Item]:
    """Every request `task` poses on `utt`: one, except qa, which gives one per question of a passage."""
    labels = utt.labels
    try:
        if task == "qa":
            pairs = labels.get("qa") or [{"question": labels["question"], "answer": labels["answer"]}]
            return [
                Item(utt, TaskRequest(task="qa", question=q), {**labels, "question": q, "answer": p["answer"]})
                for p in pairs
                for q in [p["question"]]
            ]
        if task == "translate":
            item = Item(utt, TaskRequest(task="translate", target_lang=labels.get("target_lang", "es")), labels)
        else:
            item = Item(utt, TaskRequest(task=task), labels)
        item.target  # noqa: B018 - a missing label fails here, naming the utterance, not mid-training
    except KeyError as e:
        raise ValueError(f"utterance {utt.id}: task {task!r} needs the label {e.args[0]!r}") from e
    return [item]


def bucketed_batches(items: list[Item], batch_size: int, rng: random.Random, max_batch_s: float = 0.0) -> list[list[Item]]:
    """`items` sorted by duration and cut into batches of `batch_size`, in random order: batch cost is
    (items x longest prompt), so similar lengths together waste little on padding. With `max_batch_s`,
    a batch also stops before (items x longest duration) would pass it (a single item always fits)."""
    batches: list[list[Item]] = []
    for item in sorted(items, key=lambda i: i.utt.duration_s):
        batch = batches[-1] if batches else None
        # ascending order: the new item is the batch's longest
        if batch is None or len(batch) == batch_size or (max_batch_s and (len(batch) + 1) * item.utt.duration_s > max_batch_s):
            batches.append([item])
        else:
            batch.append(item)
    rng.shuffle(batches)
    return batches


def tasks_of(utts: list[Utterance]) -> list[str]:
    found = {t for u in utts for t in u.tasks}
    unknown = sorted(found - set(TASK_NAMES))
    if unknown:
        raise ValueError(f"manifest names unknown task(s) {unknown}; expected some of {', '.join(TASK_NAMES)}")
    return [t for t in TASK_NAMES if t in found]


def heldout_items(utts: list[Utterance], per_task: int, tasks: Sequence[str] | None = None) -> dict[str, list[Item]]:
    """Per task (of `tasks` only, when given: the ones the run trains), the first `per_task` items (0:
    all) in id-hash order: the same items on every call."""
    out = {}
    ordered = id_hash_order(utts)
    for task in tasks_of(utts):
        if tasks is not None and task not in tasks:
            continue
        items = [i for u in ordered if task in u.tasks for i in items_of(u, task)]
        out[task] = items[:per_task] if per_task else items
    return out


# --- speech tokens from the encoder feature cache ------------------------------------------------


@torch.no_grad()
def speech_tokens(compressor: nn.Module, features: FeatureCache, utts: list[Utterance], *,
                  batch_size: int) -> tuple[dict[str, Tensor], dict[str, str | None]]:  # fmt: skip
    """id -> (N, D) float16 compressed speech tokens, and id -> the CTC transcript (None without a CTC
    head), from cached encoder features: each recording's chunks are compressed and joined exactly as
    `SpeechLM.encode_recordings` does at inference (`join_chunks`). `train` keeps them in a `TokenCache`."""
    from spokenlm.model import join_chunks

    tokens: dict[str, Tensor] = {}
    transcripts: dict[str, str | None] = {}
    order = sorted(utts, key=lambda u: u.duration_s)  # similar lengths together: little padding
    for first in range(0, len(order), batch_size):
        group = order[first : first + batch_size]
        joined = join_chunks(compressor, features.chunk_batches(group), [u.duration_s for u in group])
        for j, utt in enumerate(group):
            # .clone() outside inference mode: a plain tensor the adapter's autograd may save
            tokens[utt.id] = joined.embeddings[j, : int(joined.lengths[j])].to(torch.float16).clone()
            transcripts[utt.id] = joined.transcripts[j] if joined.transcripts is not None else None
    return tokens, transcripts


def transcript_readers(config: SpeechLMTrainConfig, compressor: nn.Module):
    """A function: utterances -> [(compressor, its utterances)], the compressor each one's transcript is
    read with. Without `train_transcript_lms` that is `compressor` for all; with it, a train utterance
    goes to a copy of `compressor` whose beam search reads the fold LM that lacks its sentence (the
    tokens are the same either way: the LM changes the transcript only)."""
    if not config.train_transcript_lms:
        return lambda utts: [(compressor, list(utts))]
    from spokenlm.compress import load_compressor, with_compressor_config
    from spokenlm.recipes.ctc_lm import fold_lm_files, transcript_fold

    if getattr(compressor.config, "beam", None) is None:
        raise ValueError(f"train_transcript_lms needs a compressor that reads with a word LM; {config.compressor_dir} has none")
    folds = []
    for path in fold_lm_files(config.train_transcript_lms):
        reader = with_compressor_config(load_compressor(config.compressor_dir), dict(config.compressor_overrides)).eval()
        reader.attach_lm(path)
        for p in reader.parameters():
            p.requires_grad_(False)
        folds.append(reader)

    def readers(utts):
        groups = [(compressor, [u for u in utts if u.split != config.train_split])]
        train = [u for u in utts if u.split == config.train_split]
        for fold, reader in enumerate(folds):
            groups.append((reader, [u for u in train if transcript_fold(u.labels.get("text") or u.id, len(folds)) == fold]))
        return [(r, members) for r, members in groups if members]

    return readers


_NOISE_ALPHABET = "abcdefghijklmnopqrstuvwxyz '"


def ctc_like_noise(text: str, cer: float, rng: random.Random) -> str:
    """`text` with character errors at rate ~`cer`, split evenly into deletions, substitutions and
    insertions of letters, space and apostrophe: the kind of mistakes a greedy character CTC makes
    (no word-level knowledge). Used to warm up the LoRA on text before it hears speech."""
    out = []
    for char in text:
        r = rng.random()
        if r < cer / 3:
            continue
        if r < 2 * cer / 3:
            out.append(rng.choice(_NOISE_ALPHABET))
        elif r < cer:
            out += [char, rng.choice(_NOISE_ALPHABET)]
        else:
            out.append(char)
    return " ".join("".join(out).split())


def speech_batch(tokens: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Cached (N_i, D) tokens -> right-padded (B, N, D) float32 and lengths (B,)."""
    lengths = torch.tensor([t.shape[0] for t in tokens], dtype=torch.long)
    return nn.utils.rnn.pad_sequence([t.float() for t in tokens], batch_first=True), lengths


class AdaptedLLM(nn.Module):
    """Adapter + LLM as one module, so DDP sees every trainable parameter in one forward."""

    def __init__(self, adapter: nn.Module, llm) -> None:
        super().__init__()
        self.adapter, self.llm = adapter, llm

    def forward(self, prompts: list[str], speech: Tensor, lengths: Tensor, targets: list[str]) -> Tensor:
        return self.llm.loss(prompts, self.adapter(speech), lengths, targets)  # speech (B, N, D_enc)


# --- scoring -------------------------------------------------------------------------------------


_PUNCTUATION = frozenset(string.punctuation)


def _squad_normalize(text: str) -> str:
    """SQuAD v1.1's answer normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(c for c in text.lower() if c not in _PUNCTUATION)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def qa_scores(refs: list[str], hyps: list[str]) -> dict[str, float]:
    """SQuAD exact match and token F1 (percent), one gold answer per question."""
    exact = f1 = 0.0
    for ref, hyp in zip(refs, hyps):
        r, h = _squad_normalize(ref).split(), _squad_normalize(hyp).split()
        exact += float(r == h)
        common = sum((Counter(r) & Counter(h)).values())
        if common:
            precision, recall = common / len(h), common / len(r)
            f1 += 2 * precision * recall / (precision + recall)
    n = max(1, len(refs))
    return {"exact": 100 * exact / n, "f1": 100 * f1 / n}


def score_task(task: str, items: list[Item], results: list) -> dict[str, float]:
    """SLUE metric definitions (spokenlm.slue.metrics) of one task's parsed results, all percent."""
    from spokenlm.slue import metrics as m

    labels = [i.labels for i in items]
    if task == "asr":
        wer = m.word_error_rate(
            [m.normalize_asr_text(x["text"]) for x in labels], [m.normalize_asr_text(r.text) for r in results]
        )
        return {"wer": wer.wer, "reference_words": wer.reference_words}
    if task == "ner":
        refs = [[(tag, x["text"][s : s + n]) for tag, s, n in x.get("entities") or []] for x in labels]
        report = m.ner_report(refs, [[(e.tag, e.text) for e in r.entities] for r in results])
        return {"f1_combined": report["combined-standard"].micro.f1, "f1_raw": report["raw-standard"].micro.f1,
                "label_f1_combined": report["combined-label"].micro.f1}  # fmt: skip
    if task == "sentiment":
        scores = m.sentiment_scores([x["sentiment"] for x in labels], [r.label for r in results])
        return {"macro_f1": scores.macro.f1, "accuracy": scores.accuracy}
    if task == "dialog-act":
        scores = m.dialog_act_scores([x["dialog_acts"] for x in labels], [list(r.acts) for r in results])
        return {"accuracy": scores.accuracy, "macro_f1": scores.macro.f1}
    if task == "translate":
        import sacrebleu

        refs = [x.get("translations") or [x["translation"]] for x in labels]
        width = max(len(r) for r in refs)  # sacrebleu: a missing reference of an item is None
        streams = [[r[k] if k < len(r) else None for r in refs] for k in range(width)]
        return {"bleu": sacrebleu.corpus_bleu([r.text for r in results], streams).score}
    if task == "qa":
        return qa_scores([x["answer"] for x in labels], [r.text for r in results])
    if task == "summarize":
        rouge = m.rouge_scores([x["summary"] for x in labels], [r.text for r in results])
        return {"rougeL": rouge.rougeL, "rouge1": rouge.rouge1, "rouge2": rouge.rouge2}
    raise ValueError(f"no metric for task {task!r}")


# the one number per task that eval files and summaries lead with, and whether higher is better
HEADLINE = {
    "asr": ("wer", False), "ner": ("f1_combined", True), "sentiment": ("macro_f1", True),
    "dialog-act": ("accuracy", True), "translate": ("bleu", True), "qa": ("f1", True), "summarize": ("rougeL", True),
}  # fmt: skip


def headline(per_task: dict[str, dict]) -> dict[str, float]:
    """Flat metrics ("asr_wer", "ner_f1_combined", ...) and "score": the mean over tasks of the
    headline numbers, 100 - WER for ASR (floored at 0): one number to pick lora vs full by."""
    flat = {
        f"{t.replace('-', '_')}_{k}": v
        for t, scores in per_task.items()
        for k, v in scores.items()
        if k not in ("items", "reference_words")
    }
    points = [
        value if higher_is_better else max(0.0, 100 - value)
        for task, (key, higher_is_better) in HEADLINE.items()
        if task in per_task
        for value in [per_task[task][key]]
    ]
    if points:
        flat["score"] = sum(points) / len(points)
    return flat


def prompt_of(item: Item, transcripts: dict[str, str | None] | None) -> str:
    """The item's prompt: plain, or hybrid with its utterance's CTC transcript (transcripts given)."""
    return build_prompt(item.request, None if transcripts is None else transcripts[item.utt.id] or "")


@torch.no_grad()
def evaluate(adapter: nn.Module, llm, tokens: dict[str, Tensor], by_task: dict[str, list[Item]], *,
             batch_size: int, max_new_tokens: int, num_examples: int,
             transcripts: dict[str, str | None] | None = None) -> dict:  # fmt: skip
    """Greedy generation over each task's items, parsed and scored; the loss is teacher-forced.
    With `transcripts`, prompts are hybrid (`prompt_of`)."""
    from spokenlm.lm import GenerationConfig

    generation = GenerationConfig(strategy="greedy", max_new_tokens=max_new_tokens)
    adapter.eval()
    llm.model.eval()
    per_task, examples, losses = {}, {}, []
    for task, items in by_task.items():
        if not items:
            continue
        order = sorted(range(len(items)), key=lambda k: tokens[items[k].utt.id].shape[0])  # little padding
        texts: list[str] = [""] * len(items)
        for first in range(0, len(order), batch_size):
            batch = [items[k] for k in order[first : first + batch_size]]
            speech, lengths = speech_batch([tokens[i.utt.id] for i in batch])
            projected = adapter(speech)
            prompts = [prompt_of(i, transcripts) for i in batch]
            losses.append((float(llm.loss(prompts, projected, lengths, [i.target for i in batch])), len(batch)))
            for k, out in zip(order[first : first + batch_size], llm.generate(prompts, projected, lengths, generation)):
                texts[k] = out.text
        results = [parse_output(i.request, t) for i, t in zip(items, texts)]
        per_task[task] = {"items": len(items), **score_task(task, items, results)}
        examples[task] = [
            {"id": i.utt.id, "prompt": prompt_of(i, transcripts), "reference": i.target, "output": t}
            for i, t in zip(items[:num_examples], texts)
        ]  # fmt: skip
    adapter.train()
    llm.model.train()
    loss = sum(v * n for v, n in losses) / max(1, sum(n for _, n in losses))
    return {"loss": loss, "tasks": per_task, "metrics": headline(per_task), "examples": examples}


# --- the recipe ----------------------------------------------------------------------------------


def _check_inputs(config: SpeechLMTrainConfig) -> None:
    checks = [("compressor_dir", "compressor.json", "the ctc recipe's OUT/compressor")]
    if config.encoder_dir:
        checks.append(("encoder_dir", None, "the ctc recipe's OUT/encoder, or a Whisper / Wav2Vec2 checkpoint dir"))
    if config.init_from:
        checks.append(("init_from", "spokenlm.json", "a speechlm bundle (an earlier run's OUT/bundle)"))
    if config.llm_dir and not config.llm_dir.endswith(".gguf"):
        checks.append(("llm_dir", "config.json", "the text-lm recipe's OUT/llm, or a .gguf file"))
    for name, marker, hint in checks:
        path = Path(getattr(config, name))
        if not path.is_dir() or (marker is not None and not (path / marker).is_file()):
            what = f"has no {marker}" if path.is_dir() else "is not a directory"
            raise FileNotFoundError(f"{name} {path} {what}; expected {hint}")


def part_source(config: SpeechLMTrainConfig, part: str) -> str:
    """Where the encoder or LLM loads from: `<part>_dir`, or the resolved `<part>_base`."""
    from spokenlm.bases import base_or_dir

    return base_or_dir(getattr(config, f"{part}_base"), getattr(config, f"{part}_dir"))


def _upstream(path: Path) -> dict:
    """What made an input directory: its recipe's metrics.json beside it, where there is one."""
    metrics = path.parent / "metrics.json"
    return {"dir": str(path), "metrics": json.loads(metrics.read_text()) if metrics.is_file() else None}


def ctc_stage_scores(utts: list[Utterance], ctc_text: dict[str, str | None]) -> dict[str, float]:
    """The CTC compressor's own transcripts scored as ASR (slue-toolkit WER, percent): the stage
    before the LLM, so a report shows what the LLM adds. Empty without a CTC head."""
    from spokenlm.slue import metrics as m

    pairs = [(u.labels["text"], ctc_text[u.id]) for u in utts if "text" in u.labels and ctc_text.get(u.id) is not None]
    if not pairs:
        return {}
    wer = m.word_error_rate([m.normalize_asr_text(r) for r, _ in pairs], [m.normalize_asr_text(h) for _, h in pairs])
    return {"ctc_wer": wer.wer}


def _input(config: SpeechLMTrainConfig, part: str) -> dict:
    base = getattr(config, f"{part}_base")
    if base is not None:
        from spokenlm.bases import KNOWN_BASES

        return {"base": base, **KNOWN_BASES[base].to_json()}
    return _upstream(Path(getattr(config, f"{part}_dir")))


def _split_stats(utts: list[Utterance], tokens: dict[str, Tensor]) -> dict:
    seconds = sum(u.duration_s for u in utts)
    return {
        "utterances": len(utts),
        "hours": round(seconds / 3600, 3),
        "tasks": dict(Counter(t for u in utts for t in u.tasks)),
        "speech_tokens_per_second": round(sum(tokens[u.id].shape[0] for u in utts) / max(seconds, 1e-9), 2),
    }


def model_config(config: SpeechLMTrainConfig):
    """The SpeechLMConfig the recipe builds (build_speechlm) and the bundle records: the frozen
    encoder and compressor loaded from their directories (or the pinned base), the LLM with LoRA
    (mode "lora") or without (mode "full"), a fresh adapter."""
    from spokenlm.adapter import AdapterConfig
    from spokenlm.lm import LoRAConfig
    from spokenlm.model import LLMConfig, Pretrained, SpeechLMConfig

    lora = None
    if config.mode == "lora":
        lora = LoRAConfig(rank=config.lora_rank, alpha=config.lora_alpha, dropout=config.lora_dropout,
                          target_modules=tuple(config.lora_targets))  # fmt: skip
    return SpeechLMConfig(
        encoder=Pretrained(path=part_source(config, "encoder"), overrides=dict(config.encoder_overrides)),
        compressor=Pretrained(path=config.compressor_dir, overrides=dict(config.compressor_overrides)),
        llm=LLMConfig(path=part_source(config, "llm"), lora=lora, prompt_transcript=config.prompt_transcript),
        adapter=AdapterConfig(hidden_dim=config.adapter_hidden_dim, kind=config.adapter_kind),
        max_chunk_s=config.max_chunk_s,
    )


def start_from_bundle(path: Path, adapter: nn.Module, llm) -> None:
    """Copy a bundle's trained adapter and LoRA weights into this run's fresh ones (`init_from`);
    a bundle whose parts have other shapes is refused, naming the part."""
    from safetensors.torch import load_file

    from spokenlm.model import read_bundle_meta

    meta = read_bundle_meta(path)
    ours = dataclasses.asdict(adapter.config)
    if meta["adapter"] != ours:
        raise ValueError(f"init_from {path}: its adapter is {meta['adapter']}, this run's is {ours}")
    lora_dir = path / "lora"
    has_lora = llm.has_lora
    if (meta["llm"].get("lora") is not None) != has_lora:
        raise ValueError(f"init_from {path}: {'no LoRA' if has_lora else 'LoRA'} there, {'LoRA' if has_lora else 'none'} here")
    adapter.load_state_dict(load_file(str(path / "adapter.safetensors")))  # bf16 files are cast on copy
    if has_lora:
        from peft import set_peft_model_state_dict

        theirs = json.loads((lora_dir / "adapter_config.json").read_text())
        mine = llm.model.peft_config["default"]
        for key in ("r", "lora_alpha"):
            if theirs.get(key) != getattr(mine, key):
                raise ValueError(f"init_from {path}: LoRA {key} {theirs.get(key)} there, {getattr(mine, key)} here")
        if sorted(theirs.get("target_modules") or []) != sorted(mine.target_modules):
            raise ValueError(
                f"init_from {path}: LoRA targets {sorted(theirs.get('target_modules') or [])} there, "
                f"{sorted(mine.target_modules)} here"
            )
        result = set_peft_model_state_dict(llm.model, load_file(str(lora_dir / "adapter_model.safetensors")))
        missing = [k for k in result.missing_keys if ".lora_" in k]
        if missing or result.unexpected_keys:
            raise ValueError(f"init_from {path}: LoRA weights do not match: missing {missing[:3]}, "
                             f"unexpected {list(result.unexpected_keys)[:3]}")  # fmt: skip


def train(config: SpeechLMTrainConfig) -> dict:
    from spokenlm.model import BundleInfo, build_speechlm, save_bundle

    config.validate()
    _check_inputs(config)
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    splits = (config.train_split, config.dev_split, *config.test_splits)
    utts = read_manifest(config.manifest, splits=splits)
    train_utts = [u for u in utts if u.split == config.train_split and u.duration_s <= config.max_duration_s]
    if not train_utts:
        raise ValueError(
            f"{config.manifest} has no {config.train_split!r} utterances of at most {config.max_duration_s} s"
        )
    tasks = [t for t in tasks_of(train_utts) if config.task_weights.get(t, 1.0) > 0]
    if not tasks:
        raise ValueError(f"every task of the train split has weight 0: {config.task_weights}")
    by_task = {t: [u for u in train_utts if t in u.tasks] for t in tasks}
    weights = [float(config.task_weights.get(t, 1.0)) for t in tasks]

    # 1. parts: frozen encoder + compressor, the LLM with LoRA (or unfrozen), a fresh adapter
    torch.manual_seed(config.seed)
    speechlm = build_speechlm(model_config(config))  # the bundle records the config, and how its LLM is prompted
    encoder, compressor, adapter, llm = speechlm.encoder.eval(), speechlm.compressor.eval(), speechlm.adapter, speechlm.llm
    for p in [*encoder.parameters(), *compressor.parameters()]:
        p.requires_grad_(False)

    # 2. speech tokens from encoder features computed once per utterance (see the module docstring)
    from spokenlm.bases import cache_dir

    started = time.monotonic()
    used = train_utts + [u for u in utts if u.split != config.train_split]
    features = FeatureCache(config.feature_cache or cache_dir() / "features", encoder, max_chunk_s=config.max_chunk_s)
    features.build(used, AudioCache(), part=(rank(), world_size()), keep=False)
    barrier()  # every worker's shards are on disk
    tokens, ctc_text = {}, {}
    readers = transcript_readers(config, compressor)  # train utterance -> the compressor to read it with
    for reader, members in readers(used):
        # the tokens on disk from an earlier start with the same features and compressor, the rest
        # computed one shard at a time: the tokens (~13/s) are all training reads, the features (50/s)
        # never all held
        def compute(shard: list[Utterance], reader=reader) -> tuple[dict[str, Tensor], dict[str, str | None]]:
            out: tuple[dict, dict] = ({}, {})
            for group in features.by_shard(shard):
                shard_tokens, shard_text = speech_tokens(reader, features, group, batch_size=config.encode_batch_size)
                out[0].update(shard_tokens)
                out[1].update(shard_text)
            return out

        cached = TokenCache(config.token_cache or cache_dir() / "tokens", features, reader)
        reader_tokens, reader_text = cached.tokens(members, compute)
        tokens.update(reader_tokens)
        ctc_text.update(reader_text)
    transcripts = ctc_text if config.prompt_transcript else None
    if transcripts is not None and any(t is None for t in transcripts.values()):
        raise ValueError("prompt_transcript needs a compressor with a CTC head (its greedy transcript goes in the prompt)")
    cache_minutes = (time.monotonic() - started) / 60
    # how wrong the training prompts' transcripts are (with train_transcript_lms: as dev's, by design)
    train_ctc_wer = ctc_stage_scores(train_utts, ctc_text).get("ctc_wer")
    dev_utts = [u for u in utts if u.split == config.dev_split]
    dev_sample = heldout_items(dev_utts, config.dev_items_per_task, tasks)  # a task weighted 0 is not scored

    # 3. optimiser: the adapter and LoRA learn at optim.lr, full-mode LLM weights at llm_lr_scale of it
    # (param groups: house build_optimizer gives one lr; here the two groups need their own scales)
    if config.mode == "lora":
        lora = [p for p in llm.model.parameters() if p.requires_grad]  # add_lora froze everything else
        groups = [{"params": [*adapter.parameters(), *lora], "lr_scale": 1.0}]
    else:
        llm.model.requires_grad_(True)
        groups = [
            {"params": list(adapter.parameters()), "lr_scale": 1.0},
            {"params": list(llm.model.parameters()), "lr_scale": config.llm_lr_scale},
        ]
    trainable = [p for g in groups for p in g["params"]]
    if config.gradient_checkpointing:
        base = llm.model.get_base_model() if hasattr(llm.model, "get_base_model") else llm.model
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    optim = config.optim
    optimizer = torch.optim.AdamW(groups, lr=optim.lr, betas=optim.betas, weight_decay=optim.weight_decay)
    model = wrap_ddp(AdaptedLLM(adapter, llm))
    checkpoints, metrics = Checkpointer(out), MetricsLog(out)
    state = checkpoints.restore({"adapter": adapter, "llm": llm.model}, optimizer)
    if state is None and config.init_from:
        start_from_bundle(Path(config.init_from), adapter, llm)
    state = state or {"step": 0, "wall_s": 0.0}
    for group, wanted in zip(optimizer.param_groups, groups):
        group["lr_scale"] = wanted["lr_scale"]  # the config's scale wins over the checkpoint's
    step, clock = state["step"], WallClock(state["wall_s"])
    rng = random.Random(config.seed * 1000 + rank() + step)  # a resumed run draws fresh batches

    def save() -> None:
        if is_main():
            checkpoints.save(step, {"adapter": adapter, "llm": llm.model}, optimizer, {"wall_s": clock.seconds})

    def dev_eval() -> None:
        """Teacher-forced loss and greedy metrics on the dev sample (main worker; the others wait)."""
        if is_main() and dev_sample:
            result = evaluate(adapter, llm, tokens, dev_sample, batch_size=config.eval_batch_size,
                              max_new_tokens=config.max_new_tokens, num_examples=0, transcripts=transcripts)  # fmt: skip
            metrics.log(step, val_loss=result["loss"], **{f"dev_{k}": v for k, v in result["metrics"].items()})
            print(f"speechlm: step {step} val_loss {result['loss']:.3f} {json.dumps(result['metrics'])}", flush=True)
        barrier()

    if step == 0 and config.first_eval:  # the untrained adapter's dev figures: the baseline the curve is read against
        dev_eval()
    adapter.train()
    llm.model.train()
    running: list[float] = []
    pending: list[list[Item]] = []  # drawn batches not yet run (bucket_batches at a time)
    # every worker must agree to stop, or one would wait forever in DDP's all-reduce for the other
    while step < optim.max_steps and not mean_across_workers(float(clock.over(optim))) > 0:
        if not pending:
            drawn = []
            for _ in range(config.batch_size * config.bucket_batches):
                task = rng.choices(tasks, weights)[0]
                drawn.append(rng.choice(items_of(rng.choice(by_task[task]), task)))
            pending = bucketed_batches(drawn, config.batch_size, rng, config.max_batch_s)
        batch = pending.pop()
        for group in optimizer.param_groups:
            group["lr"] = lr_now(step, clock.seconds, optim) * group["lr_scale"]
        if step < config.text_warmup_steps:  # text only: a noisy transcript in the prompt, no speech tokens
            noisy = [ctc_like_noise(i.labels["text"], config.warmup_cer, rng) for i in batch]
            prompts = [build_prompt(i.request, t) for i, t in zip(batch, noisy)]
            speech, lengths = speech_batch([tokens[i.utt.id][:0] for i in batch])
        else:
            prompts = [prompt_of(i, transcripts) for i in batch]
            speech, lengths = speech_batch([tokens[i.utt.id] for i in batch])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16):
            loss = model(prompts, speech, lengths, [i.target for i in batch])
        loss.backward()
        clip_and_step(optimizer, trainable, optim)
        step += 1
        running.append(loss.item())
        if step % config.log_every == 0:
            mean = mean_across_workers(sum(running) / len(running))
            running = []
            if is_main():
                metrics.log(step, loss=mean, lr=optimizer.param_groups[0]["lr"])
        if step % config.eval_every == 0:
            dev_eval()
            save()
        elif config.checkpoint_every and step % config.checkpoint_every == 0:
            save()
    save()

    # 5. final evaluation, bundle, summary (main worker)
    summary: dict = {
        "stage": "speechlm", "mode": config.mode, "steps": step, "wall_minutes": round(clock.seconds / 60, 2),
        "cache_minutes": round(cache_minutes, 2), "workers": world_size(), "tasks": tasks,
        "train_ctc_wer": train_ctc_wer,
    }  # fmt: skip
    if is_main():
        provenance = _finish(config, out, utts, train_utts, tokens, ctc_text, adapter, llm, metrics, trainable, summary)
        metrics.write_summary(summary)
        metrics.plot(title=f"speechlm ({config.mode})")
        speechlm.info = BundleInfo(trained=True, tasks=tuple(tasks), provenance=provenance)
        from spokenlm.bases import KNOWN_BASES

        # a pinned base that stayed frozen is named, not copied: the bundle holds only what trained
        encoder_base = KNOWN_BASES[config.encoder_base] if config.encoder_base else None
        llm_base = KNOWN_BASES[config.llm_base] if config.llm_base and config.mode == "lora" else None
        save_bundle(speechlm, out / "bundle", encoder_base=encoder_base, llm_base=llm_base,
                    weights_dtype=getattr(torch, config.bundle_dtype))  # fmt: skip
        if config.transcriber:
            from spokenlm.model import set_bundle_transcriber
            from spokenlm.transcriber import read_transcriber_config

            set_bundle_transcriber(out / "bundle", read_transcriber_config(config.transcriber))
        if config.asr_from_transcript:
            from spokenlm.model import set_bundle_asr_from_transcript

            set_bundle_asr_from_transcript(out / "bundle", True)
    barrier()
    return summary


def _finish(config, out, utts, train_utts, tokens, ctc_text, adapter, llm, metrics, trainable, summary: dict) -> dict:
    """Evaluate dev and test splits in full (eval_<split>.json), complete `summary` in place, write
    OUT/config.yaml; returns the bundle's provenance."""
    step = summary["steps"]
    evals = {}
    for split in dict.fromkeys((config.dev_split, *config.test_splits)):
        split_utts = [u for u in utts if u.split == split]
        if not split_utts:
            continue
        transcripts = ctc_text if config.prompt_transcript else None
        result = evaluate(adapter, llm, tokens, heldout_items(split_utts, config.final_items_per_task, summary["tasks"]),
                          batch_size=config.eval_batch_size, max_new_tokens=config.max_new_tokens,
                          num_examples=config.num_examples, transcripts=transcripts)  # fmt: skip
        result = {"split": split, "step": step, "utterances": len(split_utts), **result}
        result["metrics"].update(ctc_stage_scores(split_utts, ctc_text))
        (out / f"eval_{split}.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
        evals[split] = result
    if config.dev_split in evals:
        metrics.log(step, val_loss=evals[config.dev_split]["loss"])

    rows = metrics.rows()
    losses = [r["loss"] for r in rows if "loss" in r]
    val_losses = [r["val_loss"] for r in rows if "val_loss" in r]
    splits = dict.fromkeys(u.split for u in utts)
    data = {split: _split_stats([u for u in utts if u.split == split], tokens) for split in splits}
    data[config.train_split] = _split_stats(train_utts, tokens)  # as trained on: within max_duration_s
    resolved = json.loads(json.dumps(to_dict(config)))  # tuples -> lists, for YAML
    import yaml

    (out / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
    summary.update({
        "train_utterances": len(train_utts),
        "train_hours": data[config.train_split]["hours"],
        "loss_start": losses[0] if losses else None,
        "loss": losses[-1] if losses else None,
        "val_loss_start": val_losses[0] if val_losses else None,
        "val_loss": val_losses[-1] if val_losses else None,
        "trainable_parameters": sum(p.numel() for p in trainable),
        "llm_parameters": sum(p.numel() for n, p in llm.model.named_parameters() if ".lora_" not in n),
        **{f"{split}_{k}": v for split, e in evals.items() for k, v in e["metrics"].items()},
        "eval": {split: {"loss": e["loss"], **e["metrics"]} for split, e in evals.items()},
        "data": data,
    })
    return {
        "recipe": "speechlm",
        "command": f"spokenlm train speechlm --config {out / 'config.yaml'}",
        "config": resolved,
        "metrics": {k: v for k, v in summary.items() if k != "data"},
        "data": data,
        "inputs": {"encoder": _input(config, "encoder"), "compressor": _upstream(Path(config.compressor_dir)),
                   "llm": _input(config, "llm")},  # fmt: skip
        "speech_token_rate_hz": data[config.train_split]["speech_tokens_per_second"],
    }
