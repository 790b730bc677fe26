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
tokens against the KV cache); the strategies written over these two (greedy, sampling, beam search,
speculative) live in ``spokenlm.decoding``, whose names this module re-exports.

Loading never unpickles and never runs remote code.
"""

from __future__ import annotations

import copy
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

from spokenlm import decoding
from spokenlm.bases import cache_dir, file_sha256
from spokenlm.decoding import (
    MAX_DRAFT_TOKENS,
    STRATEGIES,
    DecodingState,
    DraftLM,
    GenerationConfig,
    GenerationOutput,
    LookupDraft,
    SpeculativeStats,
    sample_next_token,
    sampling_probs,
    speculative_generate,
)
from spokenlm.tasks import AUDIO_TOKEN
from spokenlm.tokenizer import PAD_TOKEN
from spokenlm.weights import no_safetensors_error

IGNORE_INDEX = -100  # label of positions that carry no loss (prompt, speech, padding)
GGUF_MAGIC = b"GGUF"  # the first 4 bytes of every GGUF file


# --------------------------------------------------------------------------------------------------
# Prompts


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
        self, *, model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompt_transcript: bool = False,
        asr_from_transcript: bool = False,
    ) -> None:  # fmt: skip
        super().__init__()
        # How this LLM (its LoRA) was trained to be prompted: True = the hybrid prompt, the CTC
        # transcript as text after the speech (`spokenlm.tasks.build_prompt(request, transcript)`).
        # A bundle records it; `spokenlm.model.request_prompts` follows it.
        self.prompt_transcript = prompt_transcript
        # ASR requests are answered with the prompt's transcript instead of decoded (`decode_speech`):
        # a bundle sets it where that transcript scored better on dev than the LLM's rewrite of it.
        self.asr_from_transcript = asr_from_transcript
        # task -> spokenlm.heads.TaskHead: those tasks are answered by a classifier over this LLM's
        # reading of the prompt (`prompt_states`) instead of decoded; a bundle records them.
        self.heads: dict = {}
        # spokenlm.translator.Translator: translate requests into its language are answered by it,
        # from the prompt's transcript, instead of decoded; a bundle records it.
        self.translator = None
        # Entities, QA answers and summaries are held to the prompt's transcript (spokenlm.grounding);
        # a bundle records it.
        self.grounded = False
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
        inputs = dict(
            inputs_embeds=batch.inputs_embeds,
            attention_mask=batch.attention_mask,
            position_ids=_position_ids(batch.attention_mask),
            use_cache=False,
        )
        labels = batch.labels[:, 1:]  # (B, L-1): position t predicts token t+1
        parts = _decoder_and_head(self.model)
        if parts is None:  # a model whose head does more than a Linear: score every position
            logits = self.model(**inputs).logits[:, :-1].float()  # (B, L-1, V)
            return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)
        # Only target positions go through the vocabulary projection: prompts and speech are most of
        # the sequence, and (B, L, V) float logits of a 49k vocabulary cost more than the LoRA step.
        decoder, head = parts
        hidden = decoder(**inputs).last_hidden_state[:, :-1]  # (B, L-1, D)
        scored = labels != IGNORE_INDEX  # (B, L-1)
        logits = head(hidden[scored]).float()  # (n_targets, V)
        return F.cross_entropy(logits, labels[scored])

    # ---- reading a prompt ----------------------------------------------------------------------------

    def prompt_hidden(
        self, prompts: Sequence[str], speech: Tensor | None, speech_lengths: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """Float last-layer hidden states (B, L, D) of the LEFT-padded prompts (speech spliced in as
        for `generate`) and their attention mask (B, L): one forward, no cache."""
        embeds, mask = self.embed_prompts(prompts, speech, speech_lengths)
        inputs = dict(inputs_embeds=embeds, attention_mask=mask, position_ids=_position_ids(mask), use_cache=False)
        parts = _decoder_and_head(self.model)
        if parts is None:
            hidden = self.model(**inputs, output_hidden_states=True).hidden_states[-1]
        else:
            hidden = parts[0](**inputs).last_hidden_state
        return hidden.float(), mask

    def prompt_states(
        self, prompts: Sequence[str], speech: Tensor | None, speech_lengths: Tensor | None, pooling: str
    ) -> Tensor:
        """`prompt_hidden` pooled by `spokenlm.heads.pool_states`: what a task head reads."""
        from spokenlm.heads import pool_states

        return pool_states(*self.prompt_hidden(prompts, speech, speech_lengths), pooling)

    # ---- decoding ----------------------------------------------------------------------------------

    def prefill(
        self, inputs_embeds: Tensor, attention_mask: Tensor, token_ids: Tensor | None = None
    ) -> tuple[Tensor, DecodingState]:
        """One forward over left-padded prompt embeddings (B, L, D) -> next-token logits (B, V) + state.

        With ``token_ids`` (B, K), those tokens follow every prompt in the same forward (a draft to
        verify: speculative decoding that drafts before the first token) and the logits are (B, K+1, V):
        after the prompt, and after each of the K tokens. The state then holds all L + K positions.
        """
        if token_ids is not None:
            embedded = self.model.get_input_embeddings()(token_ids).to(inputs_embeds.dtype)
            inputs_embeds = torch.cat([inputs_embeds, embedded], dim=1)
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones(token_ids.shape)], dim=1)
        keep = 1 if token_ids is None else token_ids.shape[1] + 1
        position_ids = _position_ids(attention_mask)  # (B, L): left pads shift each row's positions
        kwargs = {"logits_to_keep": keep} if _accepts(self.model, "logits_to_keep") else {}
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
        # left padding: the last columns are real for every row
        return (out.logits[:, -1] if token_ids is None else out.logits[:, -keep:]), state

    @torch.inference_mode()
    def reply_log_probs(self, prompt: str, speech: Tensor | None, speech_lengths: Tensor | None,
                        replies: Sequence[str], batch_size: int = 64) -> list[float]:  # fmt: skip
        """log p(reply | prompt) of each reply: its tokens and the end of the turn (or eos), natural
        log. The prompt (one; speech (1, N, D) spliced at ``<audio>``) is read once and its KV cache
        shared; the replies follow it in batches of `batch_size`, each padded at its end (a pad
        after a reply's last token changes none of its probabilities)."""
        if not replies:
            return []
        embeds, mask = self.embed_prompts([prompt], speech, speech_lengths)
        first_logits, state = self.prefill(embeds, mask)
        first = first_logits[0].float().log_softmax(-1)  # the reply's first token
        end_id = self.eos_token_ids[0] if self.end_of_turn_id is None else self.end_of_turn_id
        out: list[float] = []
        for start in range(0, len(replies), batch_size):
            ids = [self.tokenizer(r, add_special_tokens=False).input_ids + [end_id] for r in replies[start : start + batch_size]]
            width = max(len(i) for i in ids)
            scores = [float(first[i[0]]) for i in ids]
            if width > 1:
                tokens = torch.full((len(ids), width), self.tokenizer.pad_token_id, dtype=torch.long, device=embeds.device)
                for row, reply in enumerate(ids):
                    tokens[row, : len(reply)] = torch.tensor(reply)
                cache = copy.deepcopy(state.past_key_values)
                cache.batch_repeat_interleave(len(ids))
                shared = DecodingState(cache, state.attention_mask.repeat(len(ids), 1), state.next_positions.repeat(len(ids)))
                logits, _ = self.decode_step(tokens[:, :-1], shared)  # (R, W-1, V): the tokens after the first
                picked = logits.float().log_softmax(-1).gather(-1, tokens[:, 1:, None])[..., 0]  # (R, W-1)
                for row, reply in enumerate(ids):
                    scores[row] += float(picked[row, : len(reply) - 1].sum())
            out += scores
        return out

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

    def generate(
        self,
        prompts: Sequence[str],
        speech: Tensor | None = None,
        speech_lengths: Tensor | None = None,
        config: GenerationConfig = GenerationConfig(),
        draft: DraftLM | LookupDraft | None = None,
    ) -> list[GenerationOutput]:
        """Continue each prompt (speech spliced at ``<audio>``, or text only when speech is None);
        the strategy is ``config``'s, speculative with a ``draft`` (``spokenlm.decoding.generate``)."""
        return decoding.generate(self, prompts, speech, speech_lengths, config, draft)


def _position_ids(attention_mask: Tensor) -> Tensor:
    # (B, L): 0, 1, 2, ... over the real tokens of each row whatever the padding side; pads get 0
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)


def _decoder_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """The body (hidden states out) and the plain Linear vocabulary head of a causal LM, or None where
    the logits are more than ``head(hidden)`` (soft-capped or scaled logits, an unusual wrapper)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft: LoRA lives inside
    get_decoder = getattr(base, "get_decoder", None)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    config = getattr(base, "config", None)
    plain = not any(getattr(config, k, None) for k in ("final_logit_softcapping", "logit_scale", "logits_scaling"))
    if get_decoder is None or not isinstance(head, nn.Linear) or not plain:
        return None
    decoder = get_decoder()
    return (decoder, head) if isinstance(decoder, nn.Module) and decoder is not base else None


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
        raise no_safetensors_error(path)
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


@dataclass(frozen=True, kw_only=True)
class LoRAConfig:
    """LoRA (Hu et al., 2021) on a frozen LLM: which projections, what rank and scale."""

    rank: int = 8
    """r of the low-rank update B @ A (A: r x d_in, B: d_out x r)."""

    alpha: int = 16
    """The update is scaled by alpha / rank."""

    dropout: float = 0.0
    """Dropout on the LoRA branch's input, training only."""

    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    """Names of the Linear layers that get an update (every block's); Llama/Qwen names."""

    def validate(self) -> None:
        if self.rank < 1 or self.alpha <= 0 or not self.target_modules:
            raise ValueError(
                f"LoRA needs rank >= 1, alpha > 0 and target_modules, got {self.rank}, {self.alpha}, "
                f"{list(self.target_modules)}"
            )
        if not 0 <= self.dropout < 1:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout}")


def add_lora(llm: SpeechLLM, config: LoRAConfig = LoRAConfig()) -> SpeechLLM:
    """Wrap the LLM with fresh LoRA weights; every base weight is frozen. Modifies ``llm.model`` in place."""
    from peft import LoraConfig, get_peft_model

    config.validate()
    if llm.has_lora:
        raise ValueError("this LLM already has LoRA weights")
    for p in llm.model.parameters():
        p.requires_grad_(False)
    peft_config = LoraConfig(
        r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
        target_modules=list(config.target_modules), task_type="CAUSAL_LM",
    )  # fmt: skip
    model = get_peft_model(llm.model, peft_config)
    return SpeechLLM(model=model, tokenizer=llm.tokenizer, prompt_transcript=llm.prompt_transcript,
                     asr_from_transcript=llm.asr_from_transcript)


@dataclass(frozen=True, kw_only=True)
class LLMSpeedups:
    """Inference-only changes to a loaded LLM (issue 17): each is kept in a deployment only where
    `spokenlm bench pipeline` shows it pays on the trained default, with its WER beside it.

    merge_lora: fold the LoRA product into the base weights (peft's merge_and_unload): the same
        function, one matmul per projection instead of three;
    dtype: "bfloat16" runs the LLM's weights and activations in bf16 (this CPU has avx512_bf16);
    int8: dynamic int8 quantization of every Linear layer (torch.ao, weights int8, activations
        quantized per batch); implies merge_lora, since peft's LoRA layers are not Linear."""

    merge_lora: bool = False
    dtype: Literal["float32", "bfloat16"] = "float32"
    int8: bool = False

    def validate(self) -> None:
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"LLMSpeedups dtype must be float32 or bfloat16, got {self.dtype!r}")
        if self.int8 and self.dtype != "float32":
            raise ValueError("LLMSpeedups int8 quantizes float32 Linear layers; leave dtype float32 with it")

    @classmethod
    def parse(cls, text: str) -> LLMSpeedups:
        """From a comma list such as "merge,bf16" or "int8" ("" or "none": no change)."""
        names = {n.strip() for n in text.split(",") if n.strip() and n.strip() != "none"}
        unknown = sorted(names - {"merge", "bf16", "int8"})
        if unknown:
            raise ValueError(f"unknown LLM speed-up(s) {unknown}; expected some of merge, bf16, int8")
        options = cls(merge_lora="merge" in names, dtype="bfloat16" if "bf16" in names else "float32", int8="int8" in names)
        options.validate()
        return options


def speed_up_llm(llm: SpeechLLM, options: LLMSpeedups) -> SpeechLLM:
    """`llm` changed for inference as `options` say (LLMSpeedups); frozen, in eval mode. Its model
    is changed in place (no second copy of the weights): use only the returned LLM. Training never
    sees this: a merged or quantized model cannot take LoRA gradients."""
    options.validate()
    model = llm.model
    if (options.merge_lora or options.int8) and llm.has_lora:
        model = model.merge_and_unload()
    if options.dtype == "bfloat16":
        model = model.to(torch.bfloat16)
    if options.int8:
        from torch.ao.quantization import quantize_dynamic

        model = quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
    model.eval().requires_grad_(False)
    return _answering_as(llm, SpeechLLM(model=model, tokenizer=llm.tokenizer, prompt_transcript=llm.prompt_transcript,
                                        asr_from_transcript=llm.asr_from_transcript))  # fmt: skip


def _answering_as(llm: SpeechLLM, new: SpeechLLM) -> SpeechLLM:
    """`new` (the same LLM changed) with `llm`'s task heads, translator and grounding: it answers as `llm` did."""
    new.heads, new.translator, new.grounded = dict(llm.heads), llm.translator, llm.grounded
    return new


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
    return SpeechLLM(model=model, tokenizer=llm.tokenizer, prompt_transcript=llm.prompt_transcript,
                     asr_from_transcript=llm.asr_from_transcript)


__all__ = [
    "DecodingState",
    "DraftLM",
    "LookupDraft",
    "GenerationConfig",
    "GenerationOutput",
    "IGNORE_INDEX",
    "LLMSpeedups",
    "LoRAConfig",
    "MAX_DRAFT_TOKENS",
    "STRATEGIES",
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
    "speed_up_llm",
    "speculative_generate",
]
