"""The decoder LLM: any Hugging Face causal LM, prompted with speech spliced in place of ``<audio>``.

Holds ``SpeechLLM`` (prompt assembly, teacher-forced loss, KV-cached decoding), its builders
(``load_llm`` from a Hugging Face directory or a GGUF file, ``build_llm`` from a config for random
init), ``save_llm``, and LoRA through peft (``add_lora`` / ``save_lora`` / ``load_lora``).

The prompt layout follows Speech-LLaMA (Wu et al., 2023, §2.3): the task instruction is text, and the
adapter's speech embeddings take the place of one ``<audio>`` marker token, so the LLM reads
``<s> instruction ... [speech_1 .. speech_n] ... target </s>``. A tokenizer with a chat template
(an instruct model) gets the instruction as a user turn instead, and the target as the assistant's
reply: ``<|im_start|>user\ninstruction ... [speech]<|im_end|>\n<|im_start|>assistant\ntarget<|im_end|>``.
The LLM stays frozen; only the adapter and LoRA (Hu et al., 2021) on the attention projections are
trained.

A GGUF file (llama.cpp's format; e.g. SmolLM2 from pip, spokenlm/bases.py) is de-quantized once by
transformers' GGUF reader and cached as a bf16 safetensors directory (``gguf_to_hf_dir``).

Decoding is split into ``prefill`` (one forward over the prompt embeddings) and ``decode_step`` (feed K
tokens against the KV cache). Greedy and sampling loops are written over these two, and so is
``speculative_generate`` (a ``DraftLM`` proposes, the target verifies K tokens in one
``decode_step``; exact for greedy and sampling). Beam search is delegated to ``transformers``'
``generate``.

Loading never unpickles and never runs remote code.
"""

from __future__ import annotations

import inspect
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PretrainedConfig, PreTrainedTokenizerBase

from spokenlm.bases import cache_dir, file_sha256
from spokenlm.tokenizer import AUDIO_TOKEN, PAD_TOKEN

IGNORE_INDEX = -100  # label of positions that carry no loss (prompt, speech, padding)
STRATEGIES = ("greedy", "beam", "sample")
MAX_DRAFT_TOKENS = 32  # beyond this a draft is almost never accepted whole; a larger value is a mistake
GGUF_MAGIC = b"GGUF"  # the first 4 bytes of every GGUF file


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
    """Where no draft model is given, draft from the CTC compressor's transcript (``LookupDraft``):
    exact like any draft, and nearly free, so it pays off for outputs that repeat the transcript."""

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


@dataclass(frozen=True)
class PromptBatch:
    """Prompt embeddings, padded, ready for the LLM."""

    inputs_embeds: Tensor  # (B, L, D)
    attention_mask: Tensor  # (B, L) 1 = real, 0 = pad
    labels: Tensor | None = None  # (B, L) target token ids, IGNORE_INDEX elsewhere; training only


# --------------------------------------------------------------------------------------------------
# The module


class SpeechLLM(nn.Module):
    """A causal LM (possibly wrapped by peft) plus its tokenizer; see the module docstring."""

    def __init__(
        self, *, model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompt_transcript: bool = False
    ) -> None:
        super().__init__()
        # How this LLM (its LoRA) was trained to be prompted: True = the hybrid prompt, the CTC
        # transcript as text after the speech (`spokenlm.tasks.build_prompt(request, transcript)`).
        # A bundle records it; `spokenlm.model.request_prompts` follows it.
        self.prompt_transcript = prompt_transcript
        if tokenizer.convert_tokens_to_ids(AUDIO_TOKEN) in (None, tokenizer.unk_token_id):
            raise ValueError(f"tokenizer has no {AUDIO_TOKEN} token; build the LLM with load_llm or build_llm")
        if tokenizer.pad_token_id is None:
            raise ValueError("tokenizer has no pad token; build the LLM with load_llm or build_llm")
        self.model = model
        self.tokenizer = tokenizer
        self.audio_token_id: int = tokenizer.convert_tokens_to_ids(AUDIO_TOKEN)
        self.eos_token_ids: list[int] = _eos_token_ids(model, tokenizer)
        # With a chat template, prompts are user turns and a target ends the assistant's turn with the
        # template's end-of-turn token, which must then stop decoding too. None: plain bos + prompt.
        has_template = bool(getattr(tokenizer, "chat_template", None))
        self.end_of_turn_id: int | None = _end_of_turn_id(tokenizer) if has_template else None
        if self.end_of_turn_id is not None and self.end_of_turn_id not in self.eos_token_ids:
            self.eos_token_ids.append(self.end_of_turn_id)

    @property
    def model_dim(self) -> int:
        return self.model.get_input_embeddings().embedding_dim

    @property
    def has_lora(self) -> bool:
        return hasattr(self.model, "peft_config")  # peft's wrapper, from add_lora or load_lora

    # ---- prompt assembly ---------------------------------------------------------------------------

    def embed_prompts(
        self, prompts: Sequence[str], speech: Tensor | None = None, speech_lengths: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Prompt embeddings with speech spliced in at ``<audio>``, LEFT-padded for generation.

        speech: (B, N, D) adapter output, right-padded; speech_lengths: (B,) valid rows per item.
        Returns inputs_embeds (B, L, D) and attention_mask (B, L). Without speech, prompts are text.
        """
        batch = self._assemble(prompts, speech, speech_lengths, targets=None, padding_side="left")
        return batch.inputs_embeds, batch.attention_mask

    def _assemble(
        self,
        prompts: Sequence[str],
        speech: Tensor | None,
        speech_lengths: Tensor | None,
        targets: Sequence[str] | None,
        padding_side: Literal["left", "right"],
    ) -> PromptBatch:
        self._check_speech(prompts, speech, speech_lengths)
        if targets is not None and len(targets) != len(prompts):
            raise ValueError(f"got {len(prompts)} prompts but {len(targets)} targets")
        embedding = self.model.get_input_embeddings()
        device, dtype = embedding.weight.device, embedding.weight.dtype
        # a target ends the assistant turn (chat template), else the text (eos)
        end_id = self.eos_token_ids[0] if self.end_of_turn_id is None else self.end_of_turn_id

        rows: list[Tensor] = []  # per item (L_i, D)
        row_labels: list[Tensor] = []  # per item (L_i,)
        for i, prompt in enumerate(prompts):
            ids = self.prompt_ids(prompt)
            target_ids = []
            if targets is not None:
                target_ids = self.tokenizer(targets[i], add_special_tokens=False).input_ids + [end_id]
            token_embeds = embedding(torch.tensor(ids + target_ids, device=device))  # (T_i, D)
            prompt_embeds, target_embeds = token_embeds[: len(ids)], token_embeds[len(ids) :]
            if speech is not None:
                k = ids.index(self.audio_token_id)
                n = int(speech_lengths[i])
                # the marker row is dropped: speech rows take its place
                prompt_embeds = torch.cat([prompt_embeds[:k], speech[i, :n].to(dtype), prompt_embeds[k + 1 :]])
            rows.append(torch.cat([prompt_embeds, target_embeds]))
            labels = torch.full((len(prompt_embeds) + len(target_ids),), IGNORE_INDEX, dtype=torch.long)
            labels[len(prompt_embeds) :] = torch.tensor(target_ids, dtype=torch.long)
            row_labels.append(labels)

        max_len = max(len(r) for r in rows)
        embeds = torch.zeros(len(rows), max_len, embedding.embedding_dim, device=device, dtype=dtype)
        mask = torch.zeros(len(rows), max_len, device=device, dtype=torch.long)
        labels = torch.full((len(rows), max_len), IGNORE_INDEX, device=device, dtype=torch.long)
        for i, (row, lab) in enumerate(zip(rows, row_labels)):
            span = slice(max_len - len(row), max_len) if padding_side == "left" else slice(0, len(row))
            embeds[i, span] = row
            mask[i, span] = 1
            labels[i, span] = lab
        return PromptBatch(embeds, mask, labels if targets is not None else None)

    def prompt_ids(self, prompt: str) -> list[int]:
        """Token ids of one prompt, up to where the reply starts: the chat template's user turn and
        assistant header when the tokenizer has a template, else bos + the prompt text."""
        if self.end_of_turn_id is None:
            bos = [] if self.tokenizer.bos_token_id is None else [self.tokenizer.bos_token_id]
            return bos + self.tokenizer(prompt, add_special_tokens=False).input_ids
        text = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )
        ids = self.tokenizer(text, add_special_tokens=False).input_ids  # the template wrote any bos itself
        markers = ids.count(self.audio_token_id)
        if markers != prompt.count(AUDIO_TOKEN):  # a template that edits or repeats the content
            raise ValueError(
                f"the chat template turned {prompt.count(AUDIO_TOKEN)} {AUDIO_TOKEN} marker(s) into {markers} "
                f"{AUDIO_TOKEN} token(s): {text!r}"
            )
        return ids

    def _check_speech(self, prompts: Sequence[str], speech: Tensor | None, speech_lengths: Tensor | None) -> None:
        if len(prompts) == 0:
            raise ValueError("got no prompts")
        if speech is None:
            if speech_lengths is not None:
                raise ValueError("speech_lengths given without speech")
            for prompt in prompts:
                if AUDIO_TOKEN in prompt:
                    raise ValueError(f"prompt has an {AUDIO_TOKEN} marker but no speech was given: {prompt!r}")
            return
        if speech_lengths is None:
            raise ValueError("speech given without speech_lengths")
        if speech.dim() != 3 or speech.shape[0] != len(prompts) or speech.shape[2] != self.model_dim:
            raise ValueError(
                f"speech must be (B={len(prompts)}, N, D={self.model_dim}), got shape {tuple(speech.shape)}"
            )
        if tuple(speech_lengths.shape) != (len(prompts),):
            raise ValueError(f"speech_lengths must be ({len(prompts)},), got shape {tuple(speech_lengths.shape)}")
        if (speech_lengths < 0).any() or (speech_lengths > speech.shape[1]).any():
            raise ValueError(f"speech_lengths must be in [0, {speech.shape[1]}], got {speech_lengths.tolist()}")
        for prompt in prompts:
            count = prompt.count(AUDIO_TOKEN)
            if count != 1:
                raise ValueError(f"prompt must contain exactly one {AUDIO_TOKEN} marker, found {count}: {prompt!r}")

    # ---- training ----------------------------------------------------------------------------------

    def loss(
        self, prompts: Sequence[str], speech: Tensor | None, speech_lengths: Tensor | None, targets: Sequence[str]
    ) -> Tensor:
        """Teacher-forced cross-entropy over the target tokens (+ eos) only, mean over those tokens."""
        # Right padding: the real tokens of every row sit at positions 0..L_i-1 and pads only follow
        # them, so no real token ever attends a pad (positions are still passed, for safety).
        batch = self._assemble(prompts, speech, speech_lengths, targets, padding_side="right")
        out = self.model(
            inputs_embeds=batch.inputs_embeds,
            attention_mask=batch.attention_mask,
            position_ids=_position_ids(batch.attention_mask),
            use_cache=False,
        )
        logits = out.logits[:, :-1].float()  # (B, L-1, V): position t predicts token t+1
        labels = batch.labels[:, 1:]  # (B, L-1)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX)

    # ---- decoding ----------------------------------------------------------------------------------

    def prefill(self, inputs_embeds: Tensor, attention_mask: Tensor) -> tuple[Tensor, DecodingState]:
        """One forward over left-padded prompt embeddings (B, L, D) -> next-token logits (B, V) + state."""
        position_ids = _position_ids(attention_mask)  # (B, L): left pads shift each row's positions
        kwargs = {"logits_to_keep": 1} if _accepts(self.model, "logits_to_keep") else {}
        out = self.model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=True,
            **kwargs,
        )
        state = DecodingState(
            past_key_values=out.past_key_values,
            attention_mask=attention_mask,
            next_positions=attention_mask.sum(dim=1),  # (B,) real tokens so far = next position id
        )
        return out.logits[:, -1], state  # left padding: the last column is real for every row

    def decode_step(self, token_ids: Tensor, state: DecodingState) -> tuple[Tensor, DecodingState]:
        """Feed (B, K) tokens after ``state``; returns logits (B, K, V) and the advanced state.

        K = 1 for plain decoding; K > 1 verifies a draft in one forward (speculative decoding). The
        cache is extended in place; a caller rejecting draft tokens crops it (``Cache.crop``) and
        trims ``attention_mask`` / ``next_positions`` to match.
        """
        b, k = token_ids.shape
        offsets = torch.arange(k, device=token_ids.device)
        position_ids = state.next_positions[:, None] + offsets  # (B, K)
        attention_mask = torch.cat([state.attention_mask, state.attention_mask.new_ones(b, k)], dim=1)  # (B, S+K)
        out = self.model(
            input_ids=token_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=state.past_key_values,
            use_cache=True,
        )
        new_state = DecodingState(out.past_key_values, attention_mask, state.next_positions + k)
        return out.logits, new_state

    @torch.inference_mode()
    def generate(
        self,
        prompts: Sequence[str],
        speech: Tensor | None = None,
        speech_lengths: Tensor | None = None,
        config: GenerationConfig = GenerationConfig(),
        draft: DraftLM | LookupDraft | None = None,
    ) -> list[GenerationOutput]:
        """Continue each prompt (speech spliced at ``<audio>``, or text only when speech is None).

        With a ``draft`` (and ``config.draft_tokens`` > 0), greedy and sampling decode speculatively:
        the output is what this model alone would give (greedy: the same tokens; sampling: the same
        distribution), only faster when the draft is cheap and often right.
        """
        config.validate()
        if draft is not None and config.draft_tokens > 0 and config.strategy != "beam":
            return speculative_generate(self, draft, prompts, speech, speech_lengths, config)[0]
        inputs_embeds, attention_mask = self.embed_prompts(prompts, speech, speech_lengths)
        if config.strategy == "beam":
            sequences = self._beam_search(inputs_embeds, attention_mask, config)
        else:
            sequences = self._decode_loop(inputs_embeds, attention_mask, config)
        return [self._output(ids) for ids in sequences]

    def _decode_loop(
        self, inputs_embeds: Tensor, attention_mask: Tensor, config: GenerationConfig
    ) -> list[tuple[list[int], bool]]:
        """Greedy or sampling with the KV cache; every item stops at its own eos. Per item: (ids, finished)."""
        b = inputs_embeds.shape[0]
        device = inputs_embeds.device
        generator = _generator(config, device)
        eos = torch.tensor(self.eos_token_ids, device=device)
        pad_id = self.tokenizer.pad_token_id

        logits, state = self.prefill(inputs_embeds, attention_mask)  # (B, V)
        finished = torch.zeros(b, dtype=torch.bool, device=device)
        steps: list[Tensor] = []  # each (B,)
        for step in range(config.max_new_tokens):
            next_ids = _pick(logits, config, generator)
            # finished rows keep being fed (a batch moves together) but with pad, and it is discarded
            next_ids = torch.where(finished, torch.full_like(next_ids, pad_id), next_ids)
            steps.append(next_ids)
            finished |= torch.isin(next_ids, eos)
            if finished.all() or step == config.max_new_tokens - 1:
                break
            step_logits, state = self.decode_step(next_ids[:, None], state)
            logits = step_logits[:, -1]
        tokens = torch.stack(steps, dim=1).tolist()  # (B, T)
        return [_until_eos(row, self.eos_token_ids) for row in tokens]

    def _beam_search(
        self, inputs_embeds: Tensor, attention_mask: Tensor, config: GenerationConfig
    ) -> list[tuple[list[int], bool]]:
        # Beam search is transformers' own `generate` over inputs_embeds; with only embeddings as input
        # it returns just the new tokens. It derives position ids from the attention mask itself.
        from transformers import GenerationConfig as HFGenerationConfig

        hf_config = HFGenerationConfig(
            max_new_tokens=config.max_new_tokens,
            num_beams=config.num_beams,
            do_sample=False,
            eos_token_id=self.eos_token_ids,
            pad_token_id=self.tokenizer.pad_token_id,
            bos_token_id=self.tokenizer.bos_token_id,
        )
        out = self.model.generate(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, generation_config=hf_config
        )  # (B, T)
        return [_until_eos(row, self.eos_token_ids) for row in out.tolist()]

    def _output(self, ids: tuple[list[int], bool]) -> GenerationOutput:
        token_ids, finished = ids
        return GenerationOutput(
            text=self.tokenizer.decode(token_ids, skip_special_tokens=True), token_ids=token_ids, finished=finished
        )


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

    def check_pairs_with(self, target: SpeechLLM) -> None:
        if self.ngram < 1:
            raise ValueError(f"ngram must be >= 1, got {self.ngram}")


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
    ``target.generate`` without a draft.

    A batch advances together: the block keeps n = the fewest drafts any unfinished item accepted,
    and every item then takes its own token at position n (the draft token where the item accepted
    it, else its correction), which is still a draw by the rule above. Batching costs speed, not
    exactness. Both KV caches are cropped back to what was kept.
    """
    config.validate()
    if config.strategy == "beam":
        raise ValueError("speculative decoding does greedy or sampling, not beam search")
    if config.draft_tokens < 1:
        raise ValueError(f"speculative decoding needs draft_tokens >= 1, got {config.draft_tokens}")
    draft.check_pairs_with(target)
    t_embeds, t_mask = target.embed_prompts(prompts, speech, speech_lengths)
    device = t_embeds.device
    generator = _generator(config, device)
    greedy = config.strategy == "greedy"
    eos = torch.tensor(target.eos_token_ids, device=device)

    t_logits, t_state = target.prefill(t_embeds, t_mask)
    pending = _pick(t_logits, config, generator)  # (B,) emitted, fed to the target not yet
    if isinstance(draft, LookupDraft):
        drafter = _LookupDrafter(draft, target, pending)
    else:
        drafter = _ModelDrafter(draft, prompts, speech, speech_lengths, pending)
    blocks = [pending[:, None]]
    emitted = 1
    finished = torch.isin(pending, eos)
    drafted = accepted = 0
    target_forwards = 1
    while emitted < config.max_new_tokens and not finished.all():
        drafts, q, valid = drafter.propose(min(config.draft_tokens, config.max_new_tokens - emitted - 1), config, generator)
        k = drafts.shape[1]  # (B, k); a lookup draft may propose fewer (valid marks real proposals)

        t_start = t_state.attention_mask.shape[1]
        logits, t_state = target.decode_step(torch.cat([pending[:, None], drafts], dim=1), t_state)  # (B, k+1, V)
        target_forwards += 1
        if greedy:
            choice = logits.argmax(dim=-1)  # (B, k+1): the target's token at each draft position, and one more
            agree = (drafts == choice[:, :k]) & valid
        else:
            p = sampling_probs(logits, config)  # (B, k+1, V)
            if q is None:  # a deterministic proposal: q is one-hot on it
                q = F.one_hot(drafts, p.shape[-1]).to(p.dtype) * valid[..., None]
            p_x = p[:, :k].gather(-1, drafts[..., None]).squeeze(-1)
            q_x = q.gather(-1, drafts[..., None]).squeeze(-1)  # > 0 where valid: each draft was drawn from q
            agree = (torch.rand(p_x.shape, generator=generator, device=device) * q_x < p_x) & valid
        n_item = agree.long().cumprod(dim=1).sum(dim=1)  # (B,) leading drafts each item accepts
        live = ~finished
        n = int(n_item[live].min())
        drafted += int(valid[live].sum())
        accepted += int(n_item[live].sum())

        if greedy:
            pending = choice[:, n]  # where an item accepted draft n, this is that same token
        elif n == k:
            pending = torch.multinomial(p[:, k], num_samples=1, generator=generator).squeeze(1)
        else:
            residual = (p[:, n] - q[:, n]).clamp(min=0)
            mass = residual.sum(dim=-1, keepdim=True)
            # p == q leaves no residual mass; then nothing was rejected in favour of anything, and p is the rule
            residual = torch.where(mass > 0, residual / mass.clamp(min=1e-30), p[:, n])
            corrected = torch.multinomial(residual, num_samples=1, generator=generator).squeeze(1)
            pending = torch.where(n_item > n, drafts[:, n], corrected)
        kept = torch.cat([drafts[:, :n], pending[:, None]], dim=1)  # (B, n+1)
        blocks.append(kept)
        emitted += n + 1
        finished |= torch.isin(kept, eos).any(dim=1)
        t_state = _crop_state(t_state, t_start + 1 + n)  # the old pending token and the kept drafts
        drafter.keep(drafts, n, pending)

    tokens = torch.cat(blocks, dim=1)[:, : config.max_new_tokens].tolist()
    outputs = [target._output(_until_eos(row, target.eos_token_ids)) for row in tokens]
    return outputs, SpeculativeStats(drafted, accepted, target_forwards, drafter.forwards)


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

    def __init__(self, draft: LookupDraft, target: SpeechLLM, first: Tensor) -> None:
        if len(draft.references) != len(first):
            raise ValueError(f"got {len(draft.references)} lookup references for {len(first)} prompts")
        self.ngram = draft.ngram
        self.refs = [
            target.tokenizer(r, add_special_tokens=False).input_ids if isinstance(r, str) else list(r)
            for r in draft.references
        ]
        self.history = [[t] for t in first.tolist()]
        self.cursor = [0] * len(first)  # per item: where in its reference the last proposal started
        self.pad = target.tokenizer.pad_token_id
        self.device = first.device
        self.forwards = 0

    def propose(self, k: int, config: GenerationConfig, generator) -> tuple[Tensor, None, Tensor]:
        rows = []
        for i, (history, ref) in enumerate(zip(self.history, self.refs)):
            start = self._continuation(history, ref, self.cursor[i])
            self.cursor[i] = start if start is not None else self.cursor[i]
            rows.append(ref[start : start + k] if start is not None and k > 0 else [])
        width = max(len(r) for r in rows)
        drafts = torch.full((len(rows), width), self.pad, dtype=torch.long)
        valid = torch.zeros(len(rows), width, dtype=torch.bool)
        for i, row in enumerate(rows):
            drafts[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            valid[i, : len(row)] = True
        return drafts.to(self.device), None, valid.to(self.device)

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


def _position_ids(attention_mask: Tensor) -> Tensor:
    # (B, L): 0, 1, 2, ... over the real tokens of each row whatever the padding side; pads get 0
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)


def _accepts(model: nn.Module, name: str) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return name in inspect.signature(base.forward).parameters


def _eos_token_ids(model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    # The tokenizer's eos first (appended to training targets), then any others the checkpoint's
    # generation config stops on (Qwen chat models stop on <|im_end|> and <|endoftext|>).
    ids: list[int] = []
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    gen = getattr(model, "generation_config", None)
    extra = getattr(gen, "eos_token_id", None)
    for token in [extra] if isinstance(extra, int) else (extra or []):
        if token not in ids:
            ids.append(token)
    if not ids:
        raise ValueError("tokenizer and generation config define no eos token")
    return ids


_REPLY = "spokenlm-reply"  # plain text, so any template copies it unchanged


def _end_of_turn_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The special token the chat template closes an assistant turn with (<|im_end|>, <|eot_id|>,
    <end_of_turn>, </s>): the first special token the template writes after a reply."""
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _REPLY}]
    try:
        text = tokenizer.apply_chat_template(turns, tokenize=False)
    except Exception as e:  # jinja errors, or a template that rejects this conversation
        raise ValueError(f"the tokenizer's chat template cannot write a user and an assistant turn: {e}") from e
    if _REPLY not in text:
        raise ValueError(f"the tokenizer's chat template drops the assistant's reply: {text!r}")
    after = tokenizer(text[text.rindex(_REPLY) + len(_REPLY) :], add_special_tokens=False).input_ids
    special = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
    closing = [i for i in after if i in special]
    if not closing:
        raise ValueError(
            f"the tokenizer's chat template ends an assistant turn with no special token: {text!r}"
        )
    return closing[0]


# --------------------------------------------------------------------------------------------------
# Builders


def _add_special_tokens(model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> None:
    """Give the tokenizer ``<audio>`` and a pad token if it lacks them; grow the embeddings to match."""
    if AUDIO_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens(
            {"additional_special_tokens": [AUDIO_TOKEN]}, replace_additional_special_tokens=False
        )
    if tokenizer.pad_token is None:
        # a pad is never attended nor scored, so eos can serve; a new token only when there is no eos
        if tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        else:
            tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    old_rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > old_rows:
        # The <audio> row is never read (speech replaces it); the mean of the old rows keeps its logit
        # ordinary. transformers' mean_resizing adds a random draw to the mean: without it every load
        # of a base gives the same weights, which a LoRA trained on them relies on.
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        tables = [m.weight for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None]
        with torch.no_grad():
            for weight in {id(w): w for w in tables}.values():  # (V, D) each; tied embeddings once
                weight[old_rows:] = weight[:old_rows].mean(dim=0)
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id


def load_llm(
    path: str | Path, *, dtype: torch.dtype | None = None, device: str | torch.device | None = None
) -> SpeechLLM:
    """Load a Hugging Face causal-LM directory (config.json, *.safetensors, tokenizer files), or a
    GGUF file: de-quantized on its first load, read from the cache after (``gguf_to_hf_dir``)."""
    path = Path(path)
    if path.is_file():
        path = gguf_to_hf_dir(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a Hugging Face model directory: no config.json")
    has_safetensors = (path / "model.safetensors").is_file() or (path / "model.safetensors.index.json").is_file()
    if not has_safetensors:
        pickled = sorted(p.name for p in path.glob("pytorch_model*.bin"))
        if pickled:
            raise ValueError(
                f"{path} holds only pickled weights ({', '.join(pickled)}); spokenlm never unpickles: "
                "convert them to model.safetensors (save_pretrained(..., safe_serialization=True))"
            )
        raise FileNotFoundError(f"{path} has no model.safetensors")
    tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    model = AutoModelForCausalLM.from_pretrained(
        str(path), use_safetensors=True, trust_remote_code=False, **({"dtype": dtype} if dtype is not None else {})
    )
    _add_special_tokens(model, tokenizer)
    if device is not None:
        model.to(device)
    return SpeechLLM(model=model, tokenizer=tokenizer)


def gguf_to_hf_dir(path: str | Path) -> Path:
    """The Hugging Face directory (bf16 safetensors, tokenizer with its chat template) of a GGUF file.

    The first call de-quantizes with transformers' GGUF reader (pip ``gguf``) and saves the result in
    ``<cache>/gguf/<sha256 of the file>/``, written under a temporary name and renamed, so an
    interrupted or concurrent first load never leaves a half directory. Later calls only hash the
    file (0.1 s for SmolLM2's 98 MB; parsing its header would take 3 s, for the vocabulary arrays).
    """
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(4)
    if head != GGUF_MAGIC:
        raise ValueError(
            f"{path} is neither a Hugging Face model directory nor a GGUF file (it starts with {head!r}, "
            f"not {GGUF_MAGIC!r})"
        )
    out = cache_dir() / "gguf" / file_sha256(path)
    if (out / "config.json").is_file():
        return out
    fields = _gguf_fields(path)
    _check_gguf_architecture(path, fields)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".tmp-{out.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    source = {"pretrained_model_name_or_path": str(path.parent), "gguf_file": path.name, "local_files_only": True}
    tokenizer = AutoTokenizer.from_pretrained(**source, trust_remote_code=False)
    _special_tokens_from_gguf(tokenizer, fields)
    model = AutoModelForCausalLM.from_pretrained(**source, dtype=torch.bfloat16, trust_remote_code=False)
    model.save_pretrained(str(tmp), safe_serialization=True)
    tokenizer.save_pretrained(str(tmp))
    try:
        os.rename(tmp, out)
    except OSError:  # another process finished first: its directory is as good as ours
        shutil.rmtree(tmp, ignore_errors=True)
        if not (out / "config.json").is_file():
            raise
    return out


def _gguf_fields(path: Path) -> dict[str, Any]:
    """The metadata of a GGUF file (not its tensors, nor its vocabulary arrays), or a ValueError
    naming what is wrong with it."""
    from gguf import GGUFReader

    vocabulary = {f"tokenizer.ggml.{name}" for name in ("tokens", "scores", "token_type", "merges")}  # large, unused
    try:
        reader = GGUFReader(str(path))  # memory-maps the file; parses the header, tensors stay unread
        return {name: field.contents() for name, field in reader.fields.items() if name not in vocabulary}
    except Exception as e:  # truncated or corrupt: numpy / struct errors from the parser
        raise ValueError(f"{path} is not a readable GGUF file: {type(e).__name__}: {e}") from e


def _check_gguf_architecture(path: Path, fields: dict[str, Any]) -> None:
    """Refuse, before any de-quantizing, a GGUF file transformers cannot turn into a causal LM."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    architecture = fields.get("general.architecture")
    # names transformers' reader renames before its own check (modeling_gguf_pytorch_utils)
    renamed = {"qwen2moe": "qwen2_moe", "qwen3moe": "qwen3_moe"}.get(architecture, architecture)
    # its list also holds metadata sections ("general", "tokenizer") and the T5 encoder-decoders
    causal = set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer", "t5", "umt5"}
    if renamed not in causal:
        raise ValueError(
            f"{path}: GGUF architecture {architecture!r} is not a causal LM that transformers can de-quantize; "
            f"supported: {', '.join(sorted(causal))}"
        )


def _special_tokens_from_gguf(tokenizer: PreTrainedTokenizerBase, fields: dict[str, Any]) -> None:
    # transformers 4.57's GGUF Llama tokenizer takes eos from bos_token_id (GGUFLlamaConverter) and
    # drops the pad id: set bos / eos / unk / pad from the ids the file itself declares.
    names = {"bos": "bos_token_id", "eos": "eos_token_id", "unk": "unknown_token_id", "pad": "padding_token_id"}
    for name, key in names.items():
        token_id = fields.get(f"tokenizer.ggml.{key}")
        if token_id is not None and 0 <= int(token_id) < len(tokenizer):
            setattr(tokenizer, f"{name}_token", tokenizer.convert_ids_to_tokens(int(token_id)))


def build_llm(config: PretrainedConfig | dict, tokenizer: PreTrainedTokenizerBase) -> SpeechLLM:
    """A randomly initialised causal LM (tests, the untrained demo, text-LM pretraining).

    config: a transformers config or its dict (with ``model_type``, e.g. "llama", "qwen2"). The
    tokenizer is given ``<audio>`` / a pad token if it lacks them (in place).
    """
    if isinstance(config, dict):
        config = dict(config)
        model_type = config.pop("model_type", None)
        if model_type is None:
            raise ValueError("a config dict needs a 'model_type' (e.g. 'llama', 'qwen2')")
        config = AutoConfig.for_model(model_type, **config)
    if config.vocab_size < len(tokenizer):
        raise ValueError(
            f"config vocab_size {config.vocab_size} is smaller than the tokenizer's {len(tokenizer)} tokens"
        )
    for name in ("bos", "eos", "pad"):
        setattr(config, f"{name}_token_id", getattr(tokenizer, f"{name}_token_id"))
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    _add_special_tokens(model, tokenizer)
    model.eval()
    return SpeechLLM(model=model, tokenizer=tokenizer)


def save_llm(llm: SpeechLLM, path: str | Path) -> None:
    """Save the base LLM (safetensors) and tokenizer as a Hugging Face directory ``load_llm`` reads.

    With LoRA attached, the base weights are saved without it; save the LoRA with ``save_lora``.
    """
    path = Path(path)
    model = llm.model
    state_dict = None
    if llm.has_lora:
        model = model.get_base_model()
        # peft wraps each target Linear as `<name>.base_layer` next to `<name>.lora_A/B`
        state_dict = {
            k.replace(".base_layer.", "."): v for k, v in model.state_dict().items() if ".lora_" not in k
        }
    model.save_pretrained(str(path), state_dict=state_dict, safe_serialization=True)
    llm.tokenizer.save_pretrained(str(path))


# --------------------------------------------------------------------------------------------------
# LoRA (peft)


def add_lora(
    llm: SpeechLLM,
    *,
    rank: int = 8,
    alpha: int = 16,
    dropout: float = 0.0,
    target_modules: Sequence[str] = ("q_proj", "v_proj"),
) -> SpeechLLM:
    """Wrap the LLM with fresh LoRA weights; every base weight is frozen. Modifies ``llm.model`` in place."""
    from peft import LoraConfig, get_peft_model

    if llm.has_lora:
        raise ValueError("this LLM already has LoRA weights")
    for p in llm.model.parameters():
        p.requires_grad_(False)
    config = LoraConfig(
        r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules), task_type="CAUSAL_LM"
    )
    model = get_peft_model(llm.model, config)
    return SpeechLLM(model=model, tokenizer=llm.tokenizer, prompt_transcript=llm.prompt_transcript)


def save_lora(llm: SpeechLLM, path: str | Path) -> None:
    """Save only the LoRA weights and config (a peft adapter dir, adapter_model.safetensors)."""
    if not llm.has_lora:
        raise ValueError("this LLM has no LoRA weights to save; call add_lora or load_lora first")
    # The embeddings are frozen, and rows _add_special_tokens appended are rebuilt identically on every
    # load: without this, peft saves both whole tables of a resized model (227 MB for SmolLM2).
    llm.model.save_pretrained(str(path), safe_serialization=True, save_embedding_layers=False)


def load_lora(llm: SpeechLLM, path: str | Path, *, trainable: bool = False) -> SpeechLLM:
    """Attach the LoRA weights saved in a peft adapter dir to ``llm`` (base weights stay frozen)."""
    from peft import PeftModel

    path = Path(path)
    if not (path / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{path} is not a peft adapter directory: no adapter_config.json")
    if not (path / "adapter_model.safetensors").is_file():
        raise ValueError(f"{path} has no adapter_model.safetensors; spokenlm never unpickles adapter weights")
    if llm.has_lora:
        raise ValueError("this LLM already has LoRA weights")
    for p in llm.model.parameters():
        p.requires_grad_(False)
    model = PeftModel.from_pretrained(llm.model, str(path), is_trainable=trainable)
    return SpeechLLM(model=model, tokenizer=llm.tokenizer, prompt_transcript=llm.prompt_transcript)


__all__ = [
    "DecodingState",
    "DraftLM",
    "LookupDraft",
    "GenerationConfig",
    "GenerationOutput",
    "IGNORE_INDEX",
    "PromptBatch",
    "SpeculativeStats",
    "SpeechLLM",
    "add_lora",
    "build_llm",
    "gguf_to_hf_dir",
    "load_llm",
    "load_lora",
    "sample_next_token",
    "sampling_probs",
    "save_llm",
    "save_lora",
    "speculative_generate",
]
