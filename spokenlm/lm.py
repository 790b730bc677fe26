"""The decoder LLM: any Hugging Face causal LM, prompted with speech spliced in place of ``<audio>``.

Holds ``SpeechLLM`` (prompt assembly, teacher-forced loss, KV-cached decoding), its builders
(``load_llm`` from a Hugging Face directory, ``build_llm`` from a config for random init),
``save_llm``, and LoRA through peft (``add_lora`` / ``save_lora`` / ``load_lora``).

The prompt layout follows Speech-LLaMA (Wu et al., 2023, §2.3): the task instruction is text, and the
adapter's speech embeddings take the place of one ``<audio>`` marker token, so the LLM reads
``<s> instruction ... [speech_1 .. speech_n] ... target </s>``. The LLM stays frozen; only the adapter
and LoRA (Hu et al., 2021) on the attention projections are trained.

Decoding is split into ``prefill`` (one forward over the prompt embeddings) and ``decode_step`` (feed K
tokens against the KV cache). Greedy and sampling loops are written over these two; a speculative
decoder can reuse them (draft with one model, verify K tokens with one ``decode_step``). Beam search
is delegated to ``transformers``' ``generate``.

Loading never unpickles and never runs remote code.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PretrainedConfig, PreTrainedTokenizerBase

from spokenlm.tokenizer import AUDIO_TOKEN, PAD_TOKEN

IGNORE_INDEX = -100  # label of positions that carry no loss (prompt, speech, padding)
STRATEGIES = ("greedy", "beam", "sample")


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

    def __init__(self, *, model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> None:
        super().__init__()
        if tokenizer.convert_tokens_to_ids(AUDIO_TOKEN) in (None, tokenizer.unk_token_id):
            raise ValueError(f"tokenizer has no {AUDIO_TOKEN} token; build the LLM with load_llm or build_llm")
        if tokenizer.pad_token_id is None:
            raise ValueError("tokenizer has no pad token; build the LLM with load_llm or build_llm")
        self.model = model
        self.tokenizer = tokenizer
        self.audio_token_id: int = tokenizer.convert_tokens_to_ids(AUDIO_TOKEN)
        self.eos_token_ids: list[int] = _eos_token_ids(model, tokenizer)

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
        bos = [] if self.tokenizer.bos_token_id is None else [self.tokenizer.bos_token_id]

        rows: list[Tensor] = []  # per item (L_i, D)
        row_labels: list[Tensor] = []  # per item (L_i,)
        for i, prompt in enumerate(prompts):
            ids = bos + self.tokenizer(prompt, add_special_tokens=False).input_ids
            target_ids = []
            if targets is not None:
                target_ids = self.tokenizer(targets[i], add_special_tokens=False).input_ids + [self.eos_token_ids[0]]
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
    ) -> list[GenerationOutput]:
        """Continue each prompt (speech spliced at ``<audio>``, or text only when speech is None)."""
        config.validate()
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
        generator = None
        if config.strategy == "sample" and config.seed is not None:
            generator = torch.Generator(device=device).manual_seed(config.seed)
        eos = torch.tensor(self.eos_token_ids, device=device)
        pad_id = self.tokenizer.pad_token_id

        logits, state = self.prefill(inputs_embeds, attention_mask)  # (B, V)
        finished = torch.zeros(b, dtype=torch.bool, device=device)
        steps: list[Tensor] = []  # each (B,)
        for step in range(config.max_new_tokens):
            if config.strategy == "greedy":
                next_ids = logits.argmax(dim=-1)
            else:
                next_ids = sample_next_token(logits, config, generator)
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


def sample_next_token(logits: Tensor, config: GenerationConfig, generator: torch.Generator | None) -> Tensor:
    """(B, V) logits -> (B,) ids sampled after temperature, top-k and top-p filtering."""
    logits = logits.float() / config.temperature
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
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)


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
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        # The <audio> row is never read (speech replaces it); mean init keeps its logit ordinary.
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id


def load_llm(
    path: str | Path, *, dtype: torch.dtype | None = None, device: str | torch.device | None = None
) -> SpeechLLM:
    """Load a Hugging Face causal-LM directory (config.json, *.safetensors, tokenizer files)."""
    path = Path(path)
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
    return SpeechLLM(model=get_peft_model(llm.model, config), tokenizer=llm.tokenizer)


def save_lora(llm: SpeechLLM, path: str | Path) -> None:
    """Save only the LoRA weights and config (a peft adapter dir, adapter_model.safetensors)."""
    if not llm.has_lora:
        raise ValueError("this LLM has no LoRA weights to save; call add_lora or load_lora first")
    llm.model.save_pretrained(str(path), safe_serialization=True)


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
    return SpeechLLM(model=model, tokenizer=llm.tokenizer)


__all__ = [
    "DecodingState",
    "GenerationConfig",
    "GenerationOutput",
    "IGNORE_INDEX",
    "PromptBatch",
    "SpeechLLM",
    "add_lora",
    "build_llm",
    "load_llm",
    "load_lora",
    "sample_next_token",
    "save_llm",
    "save_lora",
]
