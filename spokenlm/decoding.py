"""Decoding strategies over a ``SpeechLLM``'s ``prefill`` / ``decode_step``: greedy, sampling, beam
search, and speculative decoding.

Every strategy is a generator of token *blocks* — (B, k) tensors of the tokens the target has
decided, in order — so that one loop serves both ``generate`` (every block, then the texts) and
``stream_tokens`` (each item's new tokens as soon as they are decided, for server-sent events).
Greedy and sampling decode one token per forward against the KV cache; beam search is delegated to
``transformers``' ``generate`` and gives one block at the end; speculative decoding (Leviathan et al.,
2023; Chen et al., 2023) has a ``DraftLM`` (or a ``LookupDraft`` of a reference text) propose tokens
that the target verifies K at a time, exact for greedy and sampling.

Not here: prompt assembly, the forward passes and the KV cache (``spokenlm.lm.SpeechLLM``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spokenlm.tasks import AUDIO_TOKEN

if TYPE_CHECKING:
    from spokenlm.lm import SpeechLLM

STRATEGIES = ("greedy", "beam", "sample")
MAX_DRAFT_TOKENS = 32  # beyond this a draft is almost never accepted whole; a larger value is a mistake


# --------------------------------------------------------------------------------------------------
# Generation config and output


@dataclass(frozen=True, kw_only=True)
class GenerationConfig:
    strategy: Literal["greedy", "beam", "sample"] = "greedy"
    """How the next token is chosen: argmax, beam search, or sampling."""

    max_new_tokens: int = 128
    """Upper bound on generated tokens per item, eos excluded."""

    num_beams: int = 4
    """Beams kept by beam search; ignored by the other strategies."""

    temperature: float = 1.0
    """Logits are divided by it before sampling; ignored by greedy and beam."""

    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens whose probability sums to >= top_p."""

    top_k: int = 0
    """Sample only among the k most likely tokens; 0 disables the filter."""

    seed: int | None = None
    """Seeds a private generator for sampling, so a seeded call is reproducible; None: global RNG."""

    draft_tokens: int = 4
    """Speculative decoding: tokens the draft model proposes per target forward, when a draft is
    given (greedy and sampling; beam search ignores the draft). 0 turns speculative decoding off."""

    ctc_draft: bool = False
    """Where no draft model is given, draft from the transcript the prompt reads (the transcriber's, else
    the CTC compressor's: ``LookupDraft``): exact like any draft, and nearly free, so it pays off for
    outputs that repeat the transcript."""

    def validate(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.num_beams < 1:
            raise ValueError(f"num_beams must be >= 1, got {self.num_beams}")
        if self.strategy == "sample" and not self.temperature > 0:
            raise ValueError(f"temperature must be > 0 for sampling, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        if not 0 <= self.draft_tokens <= MAX_DRAFT_TOKENS:
            raise ValueError(f"draft_tokens must be in [0, {MAX_DRAFT_TOKENS}] (0: no speculation), got {self.draft_tokens}")


@dataclass(frozen=True)
class GenerationOutput:
    text: str  # decoded without special tokens
    token_ids: list[int]  # generated ids, eos and anything after it excluded
    finished: bool  # True: stopped at eos; False: cut at max_new_tokens


@dataclass
class DecodingState:
    """What one KV-cached decoding pass carries between steps (all items of the batch together)."""

    past_key_values: Any  # a transformers Cache over every position fed so far
    attention_mask: Tensor  # (B, S) 1 = real position; left padding stays 0 forever
    next_positions: Tensor  # (B,) position id the next fed token gets (left padding: not S)


# --------------------------------------------------------------------------------------------------
# generate / stream_tokens over one block generator


@torch.inference_mode()
def generate(
    llm: SpeechLLM,
    prompts: Sequence[str],
    speech: Tensor | None = None,
    speech_lengths: Tensor | None = None,
    config: GenerationConfig = GenerationConfig(),
    draft: DraftLM | LookupDraft | None = None,
) -> list[GenerationOutput]:
    """Continue each prompt (speech spliced at ``<audio>``, or text only when speech is None).

    With a ``draft`` (and ``config.draft_tokens`` > 0), greedy and sampling decode speculatively:
    the output is what ``llm`` alone would give (greedy: the same tokens; sampling: the same
    distribution), only faster when the draft is cheap and often right.
    """
    return _outputs(llm, list(token_blocks(llm, prompts, speech, speech_lengths, config, draft)), config)


@torch.inference_mode()
def stream_tokens(
    llm: SpeechLLM,
    prompts: Sequence[str],
    speech: Tensor | None = None,
    speech_lengths: Tensor | None = None,
    config: GenerationConfig = GenerationConfig(),
    draft: DraftLM | LookupDraft | None = None,
) -> Iterator[list[list[int]]]:
    """``generate``'s tokens as they are decided: per block, each item's new token ids (eos, what
    follows it and what lies past max_new_tokens left out). Joined per item they are exactly
    ``generate``'s ``token_ids``; beam search gives one block at the end (its best prefix changes)."""
    eos = set(llm.eos_token_ids)
    stopped: list[bool] | None = None
    counts: list[int] | None = None
    for block in token_blocks(llm, prompts, speech, speech_lengths, config, draft):
        rows = block.tolist()
        stopped = stopped or [False] * len(rows)
        counts = counts or [0] * len(rows)
        new: list[list[int]] = []
        for i, row in enumerate(rows):
            ids: list[int] = []
            for token in row:
                if stopped[i] or counts[i] >= config.max_new_tokens:
                    break
                if token in eos:
                    stopped[i] = True
                    break
                ids.append(token)
                counts[i] += 1
            new.append(ids)
        yield new


def token_blocks(
    llm: SpeechLLM,
    prompts: Sequence[str],
    speech: Tensor | None,
    speech_lengths: Tensor | None,
    config: GenerationConfig,
    draft: DraftLM | LookupDraft | None = None,
) -> Iterator[Tensor]:
    """The (B, k) token blocks of the strategy ``config`` and ``draft`` choose (module docstring).
    Rows go on past their eos (a batch moves together): cut them with ``_until_eos``."""
    config.validate()
    if draft is not None and config.draft_tokens > 0 and config.strategy != "beam":
        return _speculative_blocks(llm, draft, prompts, speech, speech_lengths, config, _Counts())
    inputs_embeds, attention_mask = llm.embed_prompts(prompts, speech, speech_lengths)
    if config.strategy == "beam":
        return iter([_beam_search(llm, inputs_embeds, attention_mask, config)])
    return _decode_blocks(llm, inputs_embeds, attention_mask, config)


def _outputs(llm: SpeechLLM, blocks: list[Tensor], config: GenerationConfig) -> list[GenerationOutput]:
    tokens = torch.cat(blocks, dim=1)[:, : config.max_new_tokens].tolist()  # (B, T)
    outputs = []
    for row in tokens:
        ids, finished = _until_eos(row, llm.eos_token_ids)
        outputs.append(GenerationOutput(text=llm.tokenizer.decode(ids, skip_special_tokens=True), token_ids=ids,
                                        finished=finished))  # fmt: skip
    return outputs


@torch.inference_mode()
def _decode_blocks(
    llm: SpeechLLM, inputs_embeds: Tensor, attention_mask: Tensor, config: GenerationConfig
) -> Iterator[Tensor]:
    """Greedy or sampling with the KV cache, one (B, 1) block per step; stops when every item has
    reached its eos or max_new_tokens."""
    b = inputs_embeds.shape[0]
    device = inputs_embeds.device
    generator = _generator(config, device)
    eos = torch.tensor(llm.eos_token_ids, device=device)
    pad_id = llm.tokenizer.pad_token_id

    logits, state = llm.prefill(inputs_embeds, attention_mask)  # (B, V)
    finished = torch.zeros(b, dtype=torch.bool, device=device)
    for step in range(config.max_new_tokens):
        next_ids = _pick(logits, config, generator)
        # finished rows keep being fed (a batch moves together) but with pad, and it is discarded
        next_ids = torch.where(finished, torch.full_like(next_ids, pad_id), next_ids)
        yield next_ids[:, None]
        finished |= torch.isin(next_ids, eos)
        if finished.all() or step == config.max_new_tokens - 1:
            break
        step_logits, state = llm.decode_step(next_ids[:, None], state)
        logits = step_logits[:, -1]


def _beam_search(llm: SpeechLLM, inputs_embeds: Tensor, attention_mask: Tensor, config: GenerationConfig) -> Tensor:
    """(B, T) the best beam's new tokens. Beam search is transformers' own `generate` over
    inputs_embeds; with only embeddings as input it returns just the new tokens, and it derives
    position ids from the attention mask itself."""
    from transformers import GenerationConfig as HFGenerationConfig

    hf_config = HFGenerationConfig(
        max_new_tokens=config.max_new_tokens,
        num_beams=config.num_beams,
        do_sample=False,
        eos_token_id=llm.eos_token_ids,
        pad_token_id=llm.tokenizer.pad_token_id,
        bos_token_id=llm.tokenizer.bos_token_id,
    )
    return llm.model.generate(inputs_embeds=inputs_embeds, attention_mask=attention_mask, generation_config=hf_config)


# --------------------------------------------------------------------------------------------------
# Speculative decoding


class DraftLM(nn.Module):
    """A small LM that proposes tokens for a larger target LM (speculative decoding).

    It must share the target's vocabulary. ``adapter`` maps the target's speech embeddings
    (B, N, D_target) to the draft's width, so the draft hears the same speech; without one the draft
    reads the prompt as text with the ``<audio>`` marker removed (text-only drafting).
    """

    def __init__(self, *, llm: SpeechLLM, adapter: nn.Module | None = None) -> None:
        super().__init__()
        self.llm = llm
        self.adapter = adapter

    def check_pairs_with(self, target: SpeechLLM) -> None:
        """Raise ValueError unless this draft can propose tokens for ``target``."""
        if self.llm.tokenizer.get_vocab() != target.tokenizer.get_vocab():
            raise ValueError("draft and target tokenizers differ: speculative decoding needs one shared vocabulary")
        rows_draft, rows_target = _output_rows(self.llm), _output_rows(target)
        if rows_draft != rows_target:
            raise ValueError(f"draft predicts {rows_draft} token ids but the target {rows_target}: they must agree")
        config = getattr(self.adapter, "config", None)
        if config is not None and (config.input_dim, config.output_dim) != (target.model_dim, self.llm.model_dim):
            raise ValueError(
                f"draft adapter maps {config.input_dim} -> {config.output_dim} dims, but target speech has "
                f"{target.model_dim} and the draft LLM takes {self.llm.model_dim}"
            )

    def embed_prompts(
        self, prompts: Sequence[str], speech: Tensor | None, speech_lengths: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """The draft's own prompt embeddings from the target's speech embeddings (see the class)."""
        if speech is None or self.adapter is None:
            return self.llm.embed_prompts([prompt.replace(AUDIO_TOKEN, "") for prompt in prompts])
        return self.llm.embed_prompts(prompts, self.adapter(speech), speech_lengths)


@dataclass(frozen=True)
class LookupDraft:
    """Model-free drafting from one reference text per prompt (prompt-lookup decoding): the draft
    proposes the tokens that follow, in the item's reference, the last tokens generated so far.

    For a speech LM the reference is the CTC compressor's greedy transcript: an ASR (or transcribing
    NER) output mostly repeats it, so whole runs of tokens are accepted per target forward, at no
    draft cost. Where nothing matches (a sentiment label), nothing is proposed and decoding proceeds
    one token per forward. Exact like any draft: the target decides every token.
    """

    references: Sequence[str | Sequence[int]]  # per prompt: a text (tokenized by the target) or token ids
    ngram: int = 3  # longest tail of the generated tokens looked up in the reference
    opens: bool | Sequence[bool] = False
    """Per prompt (or for all): the output is expected to open as its reference does (ASR: the
    transcript). Those prompts' first draft block is the reference's opening, verified in the
    prefill's own forward, so an output that repeats a short reference costs one forward in all."""

    def check_pairs_with(self, target: SpeechLLM) -> None:
        if self.ngram < 1:
            raise ValueError(f"ngram must be >= 1, got {self.ngram}")
        if not isinstance(self.opens, bool) and len(self.opens) != len(self.references):
            raise ValueError(f"got {len(self.opens)} opens flags for {len(self.references)} lookup references")


@dataclass(frozen=True)
class SpeculativeStats:
    drafted: int  # draft tokens proposed to items still decoding
    accepted: int  # of those, accepted by the target's rule (before the batch keeps its minimum)
    target_forwards: int  # the prefill and one verification per block
    draft_forwards: int

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0


@torch.inference_mode()
def speculative_generate(
    target: SpeechLLM,
    draft: DraftLM | LookupDraft,
    prompts: Sequence[str],
    speech: Tensor | None = None,
    speech_lengths: Tensor | None = None,
    config: GenerationConfig = GenerationConfig(),
) -> tuple[list[GenerationOutput], SpeculativeStats]:
    """Draft-then-verify decoding (Leviathan et al., 2023; Chen et al., 2023), greedy or sampling.

    Each block, the draft proposes k = ``config.draft_tokens`` tokens (a ``DraftLM`` one at a time,
    a ``LookupDraft`` from its reference text, with q one-hot) and the target scores the pending
    token plus all k in ONE ``decode_step``. Draft token j is accepted while
    (greedy) it equals the target's argmax, or (sampling) with probability min(1, p_j(x) / q_j(x));
    at the first rejection the target's token is drawn from norm(max(0, p_j - q_j)) (greedy: its
    argmax), after a fully accepted block from p_k. So a block yields 1 to k+1 tokens, each exactly
    from the target's own (temperature/top-k/top-p filtered) distribution: greedy output equals
    ``target.generate`` without a draft. A ``LookupDraft`` that ``opens`` drafts its first block
    before any token: the reference's opening follows the prompt in the prefill's forward and is
    verified there by the same rule.

    A batch advances together: the block keeps n = the fewest drafts any unfinished item accepted,
    and every item then takes its own token at position n (the draft token where the item accepted
    it, else its correction), which is still a draw by the rule above. Batching costs speed, not
    exactness. Both KV caches are cropped back to what was kept.
    """
    counts = _Counts()
    blocks = list(_speculative_blocks(target, draft, prompts, speech, speech_lengths, config, counts))
    return _outputs(target, blocks, config), counts.stats()


@dataclass
class _Counts:
    """SpeculativeStats as they accumulate."""

    drafted: int = 0
    accepted: int = 0
    target_forwards: int = 0
    draft_forwards: int = 0

    def stats(self) -> SpeculativeStats:
        return SpeculativeStats(self.drafted, self.accepted, self.target_forwards, self.draft_forwards)


@torch.inference_mode()
def _speculative_blocks(
    target: SpeechLLM,
    draft: DraftLM | LookupDraft,
    prompts: Sequence[str],
    speech: Tensor | None,
    speech_lengths: Tensor | None,
    config: GenerationConfig,
    counts: _Counts,
) -> Iterator[Tensor]:
    """speculative_generate's blocks as the target decides them: (B, 1) first (or (B, n + 1) from an
    opening verified in the prefill), then (B, n + 1) per verification (see speculative_generate);
    `counts` is updated as they go."""
    config.validate()
    if config.strategy == "beam":
        raise ValueError("speculative decoding does greedy or sampling, not beam search")
    if config.draft_tokens < 1:
        raise ValueError(f"speculative decoding needs draft_tokens >= 1, got {config.draft_tokens}")
    draft.check_pairs_with(target)
    t_embeds, t_mask = target.embed_prompts(prompts, speech, speech_lengths)
    device = t_embeds.device
    generator = _generator(config, device)
    eos = torch.tensor(target.eos_token_ids, device=device)
    finished = torch.zeros(len(t_embeds), dtype=torch.bool, device=device)

    lookup = _LookupDrafter(draft, target, len(t_embeds), device) if isinstance(draft, LookupDraft) else None
    opening = None if lookup is None else lookup.opening(min(config.draft_tokens, config.max_new_tokens - 1))
    counts.target_forwards = 1
    if opening is None:
        t_logits, t_state = target.prefill(t_embeds, t_mask)
        pending = _pick(t_logits, config, generator)  # (B,) emitted, fed to the target not yet
        kept = pending[:, None]
    else:  # the openings are verified in the prefill's forward, as a block after a pending token is
        drafts, valid = opening
        logits, t_state = target.prefill(t_embeds, t_mask, drafts)  # (B, k+1, V)
        n, pending = _verify(logits, drafts, None, valid, finished, config, generator, counts)
        t_state = _crop_state(t_state, t_embeds.shape[1] + n)  # the prompt and the kept drafts
        kept = torch.cat([drafts[:, :n], pending[:, None]], dim=1)
    if lookup is not None:
        drafter = lookup.start(kept)
    else:
        drafter = _ModelDrafter(draft, prompts, speech, speech_lengths, pending)
    counts.draft_forwards = drafter.forwards
    yield kept
    emitted = kept.shape[1]
    finished |= torch.isin(kept, eos).any(dim=1)
    while emitted < config.max_new_tokens and not finished.all():
        drafts, q, valid = drafter.propose(min(config.draft_tokens, config.max_new_tokens - emitted - 1), config, generator)
        # (B, k); a lookup draft may propose fewer (valid marks real proposals)
        t_start = t_state.attention_mask.shape[1]
        logits, t_state = target.decode_step(torch.cat([pending[:, None], drafts], dim=1), t_state)  # (B, k+1, V)
        counts.target_forwards += 1
        n, pending = _verify(logits, drafts, q, valid, finished, config, generator, counts)
        kept = torch.cat([drafts[:, :n], pending[:, None]], dim=1)  # (B, n+1)
        emitted += n + 1
        finished |= torch.isin(kept, eos).any(dim=1)
        t_state = _crop_state(t_state, t_start + 1 + n)  # the old pending token and the kept drafts
        drafter.keep(drafts, n, pending)
        counts.draft_forwards = drafter.forwards
        yield kept


def _verify(
    logits: Tensor, drafts: Tensor, q: Tensor | None, valid: Tensor, finished: Tensor, config: GenerationConfig,
    generator: torch.Generator | None, counts: _Counts,
) -> tuple[int, Tensor]:  # fmt: skip
    """The target's verdict on a (B, k) draft block from its (B, k+1, V) logits (position j: the
    distribution of the token after draft j-1): n, the drafts the batch keeps (the fewest any
    unfinished item accepts), and each item's (B,) token at position n."""
    k = drafts.shape[1]
    if config.strategy == "greedy":
        choice = logits.argmax(dim=-1)  # (B, k+1): the target's token at each draft position, and one more
        agree = (drafts == choice[:, :k]) & valid
    else:
        p = sampling_probs(logits, config)  # (B, k+1, V)
        if q is None:  # a deterministic proposal: q is one-hot on it
            q = F.one_hot(drafts, p.shape[-1]).to(p.dtype) * valid[..., None]
        p_x = p[:, :k].gather(-1, drafts[..., None]).squeeze(-1)
        q_x = q.gather(-1, drafts[..., None]).squeeze(-1)  # > 0 where valid: each draft was drawn from q
        agree = (torch.rand(p_x.shape, generator=generator, device=logits.device) * q_x < p_x) & valid
    n_item = agree.long().cumprod(dim=1).sum(dim=1)  # (B,) leading drafts each item accepts
    live = ~finished
    n = int(n_item[live].min())
    counts.drafted += int(valid[live].sum())
    counts.accepted += int(n_item[live].sum())
    if config.strategy == "greedy":
        return n, choice[:, n]  # where an item accepted draft n, this is that same token
    if n == k:
        return n, torch.multinomial(p[:, k], num_samples=1, generator=generator).squeeze(1)
    residual = (p[:, n] - q[:, n]).clamp(min=0)
    mass = residual.sum(dim=-1, keepdim=True)
    # p == q leaves no residual mass; then nothing was rejected in favour of anything, and p is the rule
    residual = torch.where(mass > 0, residual / mass.clamp(min=1e-30), p[:, n])
    corrected = torch.multinomial(residual, num_samples=1, generator=generator).squeeze(1)
    return n, torch.where(n_item > n, drafts[:, n], corrected)


class _ModelDrafter:
    """A DraftLM's side of speculative_generate: its KV cache and the emitted tokens it has not read."""

    def __init__(self, draft: DraftLM, prompts, speech, speech_lengths, first: Tensor) -> None:
        self.llm = draft.llm
        _, self.state = self.llm.prefill(*draft.embed_prompts(prompts, speech, speech_lengths))
        self.feed = first[:, None]  # (B, m) emitted tokens the draft has not read yet
        self.forwards = 1

    def propose(self, k: int, config: GenerationConfig, generator) -> tuple[Tensor, Tensor | None, Tensor]:
        """(B, k) draft tokens, their (B, k, V) sampling distributions (None for greedy), all valid."""
        self.start, self.fed = self.state.attention_mask.shape[1], self.feed.shape[1]
        tokens: list[Tensor] = []
        probs: list[Tensor] = []
        feed = self.feed
        for _ in range(k):
            logits, self.state = self.llm.decode_step(feed, self.state)
            self.forwards += 1
            if config.strategy == "greedy":
                token = logits[:, -1].argmax(dim=-1)
            else:
                q = sampling_probs(logits[:, -1], config)
                token = torch.multinomial(q, num_samples=1, generator=generator).squeeze(1)
                probs.append(q)
            tokens.append(token)
            feed = token[:, None]
        drafts = torch.stack(tokens, dim=1) if tokens else self.feed.new_zeros(len(self.feed), 0)
        return drafts, torch.stack(probs, dim=1) if probs else None, torch.ones_like(drafts, dtype=torch.bool)

    def keep(self, drafts: Tensor, n: int, pending: Tensor) -> None:
        """The target kept drafts[:, :n] and then emitted `pending`."""
        k = drafts.shape[1]
        if k == 0:  # the draft read nothing this block
            self.feed = torch.cat([self.feed, pending[:, None]], dim=1)
        elif n == k:  # the draft read its feed and drafts 0..k-2; the last draft is still unread
            self.feed = torch.cat([drafts[:, k - 1 :], pending[:, None]], dim=1)
        else:
            self.state = _crop_state(self.state, self.start + self.fed + n)
            self.feed = pending[:, None]


class _LookupDrafter:
    """A LookupDraft's side: each item's emitted tokens and where its reference continues them."""

    def __init__(self, draft: LookupDraft, target: SpeechLLM, batch: int, device: torch.device) -> None:
        if len(draft.references) != batch:
            raise ValueError(f"got {len(draft.references)} lookup references for {batch} prompts")
        self.ngram = draft.ngram
        self.refs = [
            target.tokenizer(r, add_special_tokens=False).input_ids if isinstance(r, str) else list(r)
            for r in draft.references
        ]
        self.opens = [draft.opens] * batch if isinstance(draft.opens, bool) else list(draft.opens)
        self.history: list[list[int]] = [[] for _ in range(batch)]
        self.cursor = [0] * batch  # per item: where in its reference the last proposal started
        self.pad = target.tokenizer.pad_token_id
        self.device = device
        self.forwards = 0

    def opening(self, k: int) -> tuple[Tensor, Tensor] | None:
        """(B, k) drafts and valid marks for the prefill: the first k tokens of each opening item's
        reference; None where no item has one to propose."""
        rows = [ref[:k] if opens else [] for ref, opens in zip(self.refs, self.opens)]
        if not any(rows):
            return None
        return self._block(rows)

    def start(self, first: Tensor) -> _LookupDrafter:
        """The target emitted its (B, m) first block: the history lookups continue from."""
        for history, row in zip(self.history, first.tolist()):
            history.extend(row)
        return self

    def propose(self, k: int, config: GenerationConfig, generator) -> tuple[Tensor, None, Tensor]:
        rows = []
        for i, (history, ref) in enumerate(zip(self.history, self.refs)):
            start = self._continuation(history, ref, self.cursor[i])
            self.cursor[i] = start if start is not None else self.cursor[i]
            rows.append(ref[start : start + k] if start is not None and k > 0 else [])
        drafts, valid = self._block(rows)
        return drafts, None, valid

    def _block(self, rows: list[list[int]]) -> tuple[Tensor, Tensor]:
        width = max(len(r) for r in rows)
        drafts = torch.full((len(rows), width), self.pad, dtype=torch.long)
        valid = torch.zeros(len(rows), width, dtype=torch.bool)
        for i, row in enumerate(rows):
            drafts[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            valid[i, : len(row)] = True
        return drafts.to(self.device), valid.to(self.device)

    def _continuation(self, history: list[int], ref: list[int], cursor: int) -> int | None:
        """Where `ref` continues the longest (<= ngram) tail of `history`: the first match at or after
        the cursor (the reference is read in order), else the first anywhere; None if no tail occurs."""
        for m in range(min(self.ngram, len(history)), 0, -1):
            tail = history[-m:]
            ends = [j + m for j in range(len(ref) - m + 1) if ref[j : j + m] == tail]
            if ends:
                return next((e for e in ends if e >= cursor), ends[0])
        return None

    def keep(self, drafts: Tensor, n: int, pending: Tensor) -> None:
        for i, history in enumerate(self.history):
            history.extend(drafts[i, :n].tolist() + [int(pending[i])])


def _crop_state(state: DecodingState, length: int) -> DecodingState:
    """Forget every position after the first ``length`` columns (all of them real tokens)."""
    drop = state.attention_mask.shape[1] - length
    if drop == 0:
        return state
    state.past_key_values.crop(length)
    return DecodingState(state.past_key_values, state.attention_mask[:, :length], state.next_positions - drop)


def _output_rows(llm: SpeechLLM) -> int:
    return llm.model.get_output_embeddings().weight.shape[0]


def sample_next_token(logits: Tensor, config: GenerationConfig, generator: torch.Generator | None) -> Tensor:
    """(B, V) logits -> (B,) ids sampled after temperature, top-k and top-p filtering."""
    probs = sampling_probs(logits, config)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)


def sampling_probs(logits: Tensor, config: GenerationConfig) -> Tensor:
    """(..., V) logits -> the distribution sampling draws from: temperature, then top-k, then top-p."""
    shape = logits.shape
    logits = logits.reshape(-1, shape[-1]).float() / config.temperature
    if 0 < config.top_k < logits.shape[-1]:
        kth = logits.topk(config.top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if config.top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # drop a token when the more likely ones already reach top_p (the first token always stays)
        drop_sorted = probs.cumsum(dim=-1) - probs >= config.top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits.softmax(dim=-1).reshape(shape)


def _generator(config: GenerationConfig, device: torch.device) -> torch.Generator | None:
    if config.strategy == "sample" and config.seed is not None:
        return torch.Generator(device=device).manual_seed(config.seed)
    return None


def _pick(logits: Tensor, config: GenerationConfig, generator: torch.Generator | None) -> Tensor:
    """(B, V) -> (B,) the next token: argmax for greedy, else a filtered sample."""
    if config.strategy == "greedy":
        return logits.argmax(dim=-1)
    return sample_next_token(logits, config, generator)


def _until_eos(row: list[int], eos_ids: list[int]) -> tuple[list[int], bool]:
    for t, token in enumerate(row):
        if token in eos_ids:
            return row[:t], True
    return row, False
