"""SpeechLM: encoder -> compressor -> adapter -> decoder LLM, its one builder, and the bundle format.

`SpeechLM` receives its parts; `build_speechlm(config)` is the only code that reads a
`SpeechLMConfig`; `save_bundle` / `load_bundle` write and read the directory layout of DESIGN.md §3:

    DIR/spokenlm.json        format version, component configs, task list, provenance
    DIR/encoder/             encoder.json + model.safetensors (an HF Wav2Vec2 dir for that backend)
    DIR/compressor/          compressor.json + model.safetensors
    DIR/adapter.safetensors
    DIR/llm/                 a Hugging Face causal-LM dir (config.json, model.safetensors, tokenizer)
    DIR/lora/                a peft adapter dir (optional)
    DIR/draft/               optional draft LM for speculative decoding: llm/ (an HF dir) and, when the
                             draft hears the speech, adapter.safetensors (target speech -> draft width)

The encoder and the LLM may instead be named by the pretrained base they are (spokenlm/bases.py):
`"llm": {"base": {"package", "version", "path", "sha256"}, "lora": "lora"}`, `"encoder": {"base": {...},
"kind": "whisper", "layer": "last"}`; then the bundle holds only what was trained (CTC head, adapter,
LoRA), and loading finds the base with `resolve_base`, verified by its hash.

Long recordings are cut at pauses into chunks of at most `max_chunk_s`; each chunk is encoded and
compressed on its own and the compressed tokens are concatenated in order, with their times kept.
The LLM thus sees the whole recording without any attention over its raw frames (the restricted
self-attention idea of long-form speech summarization, Sharma et al., 2022).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from spokenlm.adapter import Adapter, AdapterConfig, build_adapter
from spokenlm.audio import SAMPLE_RATE, batch_audio, split_on_silence
from spokenlm.bases import BaseError, BaseRef, resolve_base
from spokenlm.compress import build_compressor, load_compressor, save_compressor
from spokenlm.compress.base import CompressedOutput
from spokenlm.compress.ctc import CTCCompressor, CTCCompressorConfig
from spokenlm.compress.stack import StackCompressorConfig
from spokenlm.compress.syllable import SyllableCompressorConfig
from spokenlm.encoders import ENCODER_KINDS, build_encoder, load_encoder, save_encoder
from spokenlm.encoders.base import EncoderOutput
from spokenlm.encoders.dinosr import DinoSREncoderConfig
from spokenlm.encoders.sylber import SylberEncoderConfig
from spokenlm.encoders.wav2vec2 import Wav2Vec2EncoderConfig, load_wav2vec2_encoder
from spokenlm.encoders.whisper import WhisperEncoderConfig, load_whisper_encoder
from spokenlm.lm import (
    DraftLM,
    GenerationConfig,
    LookupDraft,
    SpeechLLM,
    add_lora,
    build_llm,
    load_llm,
    load_lora,
    save_llm,
    save_lora,
)
from spokenlm.tasks import TASK_NAMES, Entities, TaskRequest, TaskResult, build_prompt, parse_output

BUNDLE_FORMAT_VERSION = 1
# The encoder kinds a bundle may name by base: their loaders also read foreign checkpoint dirs (HF,
# CTranslate2, fairseq) and take the layer choice.
BASE_ENCODER_LOADERS = {"wav2vec2": load_wav2vec2_encoder, "whisper": load_whisper_encoder}

EncoderConfig = Wav2Vec2EncoderConfig | DinoSREncoderConfig | SylberEncoderConfig | WhisperEncoderConfig
CompressorConfig = CTCCompressorConfig | StackCompressorConfig | SyllableCompressorConfig


@dataclass(frozen=True, kw_only=True)
class LLMConfig:
    """Where the decoder LLM comes from: a checkpoint directory, or an architecture to initialise."""

    path: str | None = None  # a Hugging Face causal-LM dir (weights + tokenizer)
    architecture: dict | None = None  # an HF config dict (with model_type) for a random init
    tokenizer: str | None = None  # tokenizer dir; required with `architecture`
    lora_rank: int = 0  # > 0: freeze the LLM and train LoRA adapters of this rank

    def validate(self) -> None:
        if (self.path is None) == (self.architecture is None):
            raise ValueError("LLMConfig needs exactly one of path or architecture")
        if self.architecture is not None and self.tokenizer is None:
            raise ValueError("LLMConfig with an architecture needs a tokenizer directory")
        if self.lora_rank < 0:
            raise ValueError(f"lora_rank must be >= 0, got {self.lora_rank}")


@dataclass(frozen=True, kw_only=True)
class SpeechLMConfig:
    encoder: EncoderConfig
    compressor: CompressorConfig
    llm: LLMConfig
    adapter_hidden_dim: int = 256  # hidden width of the MLP adapter
    max_chunk_s: float = 30.0  # long audio is split at pauses into chunks no longer than this

    def validate(self) -> None:
        self.encoder.validate()
        self.compressor.validate()
        self.llm.validate()
        if self.adapter_hidden_dim <= 0:
            raise ValueError(f"adapter_hidden_dim must be > 0, got {self.adapter_hidden_dim}")
        if not 1.0 <= self.max_chunk_s <= 600.0:
            raise ValueError(f"max_chunk_s must be within [1, 600] seconds, got {self.max_chunk_s}")


@dataclass(frozen=True)
class SpeechTokens:
    """Compressed speech of whole recordings, chunks joined, before the adapter."""

    embeddings: Tensor  # (B, N, D_enc) right-padded
    lengths: Tensor  # (B,) tokens per recording
    spans_s: list[list[tuple[float, float]]]  # per recording, per token: seconds in the recording
    durations_s: list[float]
    transcripts: list[str] | None  # greedy CTC transcripts when the compressor has a CTC head
    char_times: list[list[tuple[str, float, float]]] | None  # per recording: (char, start_s, end_s)

    @property
    def tokens_per_second(self) -> list[float]:
        return [n / d for n, d in zip(self.lengths.tolist(), self.durations_s)]


@dataclass(frozen=True)
class RunOutput:
    request: TaskRequest
    result: TaskResult
    transcript: str | None  # the CTC transcript of the speech, where there is a CTC head
    tokens_per_second: float  # compressed tokens per second of audio fed to the LLM
    timing_ms: dict[str, float]  # per stage, for the whole batch


@dataclass(frozen=True)
class BundleInfo:
    format_version: int = BUNDLE_FORMAT_VERSION
    trained: bool = False  # False: random weights, outputs are meaningless
    tasks: tuple[str, ...] = TASK_NAMES
    provenance: dict = field(default_factory=dict)  # how it was made: recipe, data, metrics


class SpeechLM(nn.Module):
    def __init__(
        self,
        *,
        encoder: nn.Module,
        compressor: nn.Module,
        adapter: Adapter,
        llm: SpeechLLM,
        max_chunk_s: float = 30.0,
        info: BundleInfo | None = None,
        draft: DraftLM | None = None,
    ):
        super().__init__()
        if compressor.output_dim != adapter.config.input_dim:
            raise ValueError(
                f"adapter input_dim {adapter.config.input_dim} != compressor output_dim {compressor.output_dim}"
            )
        if adapter.config.output_dim != llm.model_dim:
            raise ValueError(f"adapter output_dim {adapter.config.output_dim} != LLM model_dim {llm.model_dim}")
        if draft is not None:
            draft.check_pairs_with(llm)
        self.encoder, self.compressor, self.adapter, self.llm = encoder, compressor, adapter, llm
        self.draft = draft  # used by greedy and sampling decoding unless GenerationConfig.draft_tokens == 0
        self.max_chunk_s = max_chunk_s
        self.info = info or BundleInfo()

    @torch.inference_mode()
    def encode_recordings(self, waves: list[Tensor], *, max_chunks_per_batch: int = 8) -> SpeechTokens:
        """Cut each recording at pauses, compress every chunk, join each recording's tokens."""
        batches = encode_chunks(self.encoder, waves, max_chunk_s=self.max_chunk_s, max_chunks_per_batch=max_chunks_per_batch)
        return join_chunks(self.compressor, batches, [wav.shape[-1] / SAMPLE_RATE for wav in waves])

    @torch.inference_mode()
    def run(
        self,
        waves: list[Tensor],
        requests: list[TaskRequest],
        generation: GenerationConfig | None = None,
    ) -> list[RunOutput]:
        """Run one task request per recording (each a mono 16 kHz waveform (S,))."""
        if len(waves) != len(requests):
            raise ValueError(f"got {len(waves)} recordings but {len(requests)} requests")
        if not waves:
            return []
        for request in requests:  # validate every request before any work
            build_prompt(request)
        generation = generation or GenerationConfig()
        t0 = time.perf_counter()
        speech = self.encode_recordings(waves)
        t1 = time.perf_counter()
        projected = self.adapter(speech.embeddings)
        t2 = time.perf_counter()
        results = decode_requests(
            self.llm, requests, projected, speech.lengths, generation, char_times=speech.char_times, draft=self.draft
        )
        t3 = time.perf_counter()
        timing = {"encode_compress": (t1 - t0) * 1e3, "adapter": (t2 - t1) * 1e3, "llm": (t3 - t2) * 1e3}
        return run_outputs(requests, results, speech, timing)


# --- the stages of SpeechLM.run, also run one per Ray actor (pipelines/stages.py) -------------------


@dataclass(frozen=True)
class ChunkBatch:
    """One encoder forward pass: up to max_chunks_per_batch chunks from one or more recordings."""

    items: list[int]  # recording index of each chunk, in batch order
    starts_s: list[float]  # offset of each chunk in its recording
    encoded: EncoderOutput  # features (B, T, D), lengths (B,); hidden_states dropped unless kept


@torch.inference_mode()
def encode_chunks(
    encoder: nn.Module,
    waves: Sequence[Tensor],
    *,
    max_chunk_s: float,
    max_chunks_per_batch: int = 8,
    keep_hidden_states: bool = False,
) -> list[ChunkBatch]:
    """Cut each recording (S,) at pauses into chunks of at most max_chunk_s and encode them in batches."""
    device = next(encoder.parameters()).device
    chunks = [(i, c) for i, wav in enumerate(waves) for c in split_on_silence(wav, max_chunk_s=max_chunk_s)]
    batches = []
    for first in range(0, len(chunks), max_chunks_per_batch):
        group = chunks[first : first + max_chunks_per_batch]
        audio = batch_audio([c.wav.to(device) for _, c in group])
        encoded: EncoderOutput = encoder(audio.wav, audio.lengths)
        if not keep_hidden_states:  # (L, B, T, D) is large and no later stage reads it
            encoded = dataclasses.replace(encoded, hidden_states=None)
        batches.append(ChunkBatch(items=[i for i, _ in group], starts_s=[c.start_s for _, c in group], encoded=encoded))
    return batches


@torch.inference_mode()
def join_chunks(compressor: nn.Module, batches: Sequence[ChunkBatch], durations_s: Sequence[float]) -> SpeechTokens:
    """Compress every chunk batch and join each recording's tokens in time order (its CTC text too)."""
    parts: list[list[tuple[Tensor, list, str | None, list]]] = [[] for _ in durations_s]
    for batch in batches:
        out = compressor(batch.encoded)
        texts, alignments = _ctc_text(compressor, out, batch.encoded.lengths)
        for j, (item, start_s) in enumerate(zip(batch.items, batch.starts_s)):
            n = int(out.lengths[j])
            spans = [(start_s + s, start_s + e) for s, e in out.span_seconds(j)]
            chars = [(ch, start_s + s, start_s + e) for ch, s, e in alignments[j]] if alignments else []
            parts[item].append((out.embeddings[j, :n], spans, texts[j] if texts else None, chars))

    embeddings = [torch.cat([p[0] for p in item_parts]) for item_parts in parts]
    has_ctc = all(p[2] is not None for item_parts in parts for p in item_parts)
    return SpeechTokens(
        embeddings=nn.utils.rnn.pad_sequence(embeddings, batch_first=True),  # (B, N, D_enc)
        lengths=torch.tensor([e.shape[0] for e in embeddings], dtype=torch.long),
        spans_s=[[s for p in item_parts for s in p[1]] for item_parts in parts],
        durations_s=list(durations_s),
        transcripts=[" ".join(t for p in ps if (t := p[2])) for ps in parts] if has_ctc else None,
        char_times=[_join_char_times(ps) for ps in parts] if has_ctc else None,
    )


def _ctc_text(compressor: nn.Module, out: CompressedOutput, frames: Tensor) -> tuple[list[str] | None, list | None]:
    """Greedy CTC text and per-character times (s, within the chunk), where there is a CTC head."""
    if not isinstance(compressor, CTCCompressor) or out.ctc_log_probs is None:
        return None, None
    alignments = compressor.char_alignment(out.ctc_log_probs, frames)
    rate = out.frame_rate_hz
    texts = ["".join(c.char for c in a) for a in alignments]
    return texts, [[(c.char, c.start_frame / rate, c.end_frame / rate) for c in a] for a in alignments]


@torch.inference_mode()
def decode_requests(
    llm: SpeechLLM,
    requests: Sequence[TaskRequest],
    projected: Tensor,
    lengths: Tensor,
    generation: GenerationConfig,
    *,
    char_times: Sequence[list[tuple[str, float, float]]] | None = None,
    recording: Sequence[int] | None = None,
    draft: DraftLM | None = None,
) -> list[TaskResult]:
    """Decode one request per entry of `recording` (default: request i on recording i) and parse it.

    projected: (B, N, D_llm) adapter output; lengths: (B,). Entities get audio times from the CTC
    `char_times` of their recording. With a `draft` (or `generation.ctc_draft` and `char_times`: a
    LookupDraft of each recording's CTC transcript), decoding is speculative (same output, faster).
    """
    recording = list(range(len(requests))) if recording is None else list(recording)
    if len(recording) != len(requests):
        raise ValueError(f"got {len(requests)} requests for {len(recording)} recording indices")
    prompts = request_prompts(llm, requests, char_times, recording)  # validates every request first
    if recording != list(range(projected.shape[0])):
        index = torch.tensor(recording, device=projected.device)
        projected, lengths = projected[index], lengths.to(projected.device)[index]
    device = next(llm.parameters()).device
    if draft is None and generation.ctc_draft and char_times is not None:
        draft = LookupDraft(["".join(c for c, _, _ in char_times[item]) for item in recording])
    texts = [o.text for o in llm.generate(prompts, projected.to(device), lengths.to(device), generation, draft=draft)]
    results = []
    for request, text, item in zip(requests, texts, recording):
        result = parse_output(request, text)
        if isinstance(result, Entities) and char_times is not None:
            result = locate_entities(result, char_times[item])
        results.append(result)
    return results


def request_prompts(
    llm: SpeechLLM,
    requests: Sequence[TaskRequest],
    char_times: Sequence[list[tuple[str, float, float]]] | None,
    recording: Sequence[int] | None = None,
) -> list[str]:
    """The prompt of each request: plain, or hybrid (the recording's CTC transcript after the speech)
    when the LLM was trained so (`SpeechLLM.prompt_transcript`, from the bundle)."""
    recording = list(range(len(requests))) if recording is None else list(recording)
    if not llm.prompt_transcript:
        return [build_prompt(r) for r in requests]
    if char_times is None:
        raise ValueError("this LLM was trained with the CTC transcript in its prompt, but the compressor gave none")
    return [build_prompt(r, "".join(c for c, _, _ in char_times[i])) for r, i in zip(requests, recording)]


def run_outputs(
    requests: Sequence[TaskRequest], results: Sequence[TaskResult], speech: SpeechTokens, timing_ms: dict[str, float]
) -> list[RunOutput]:
    """One RunOutput per request (request i on recording i)."""
    return [
        RunOutput(
            request=request,
            result=result,
            transcript=speech.transcripts[i] if speech.transcripts is not None else None,
            tokens_per_second=speech.tokens_per_second[i],
            timing_ms=dict(timing_ms),
        )
        for i, (request, result) in enumerate(zip(requests, results))
    ]


def _join_char_times(parts) -> list[tuple[str, float, float]]:
    joined: list[tuple[str, float, float]] = []
    for _, _, _, chars in parts:
        if joined and chars:  # chunks are joined by a space, as their transcripts are
            joined.append((" ", joined[-1][2], chars[0][1]))
        joined.extend(chars)
    return joined


def locate_entities(result: Entities, char_times: list[tuple[str, float, float]]) -> Entities:
    """Give each entity audio times by aligning the LLM's text to the CTC characters.

    A character-level diff (difflib) maps positions of the LLM text onto CTC characters, whose frame
    spans are known; an entity gets the span from its first to its last matched character.
    """
    ctc_text = "".join(ch for ch, _, _ in char_times)
    matcher = difflib.SequenceMatcher(None, result.text, ctc_text, autojunk=False)
    to_ctc: dict[int, int] = {}
    for block in matcher.get_matching_blocks():
        for k in range(block.size):
            to_ctc[block.a + k] = block.b + k
    located = []
    for e in result.entities:
        hits = [to_ctc[i] for i in range(e.start_char, e.end_char) if i in to_ctc]
        if hits:
            e = dataclasses.replace(e, start_s=char_times[min(hits)][1], end_s=char_times[max(hits)][2])
        located.append(e)
    return dataclasses.replace(result, entities=tuple(located))


# --- building and the bundle ---------------------------------------------------------------------


def build_speechlm(config: SpeechLMConfig) -> SpeechLM:
    """Build every part from `config`: the one place that reads a SpeechLMConfig."""
    config.validate()
    encoder = build_encoder(config.encoder)
    compressor = build_compressor(config.compressor)
    if config.llm.path is not None:
        llm = load_llm(config.llm.path)
    else:
        from transformers import AutoTokenizer

        llm = build_llm(config.llm.architecture, AutoTokenizer.from_pretrained(config.llm.tokenizer))
    if config.llm.lora_rank:
        llm = add_lora(llm, rank=config.llm.lora_rank, alpha=2 * config.llm.lora_rank)
    adapter = build_adapter(
        AdapterConfig(
            input_dim=compressor.output_dim, output_dim=llm.model_dim, hidden_dim=config.adapter_hidden_dim
        )
    )
    return SpeechLM(encoder=encoder, compressor=compressor, adapter=adapter, llm=llm, max_chunk_s=config.max_chunk_s)


def save_bundle(
    model: SpeechLM, path: str | Path, *, encoder_base: BaseRef | None = None, llm_base: BaseRef | None = None
) -> Path:
    """Write `model` as a bundle directory (module docstring).

    encoder_base / llm_base: that part is the pretrained base, unchanged (the caller knows; nothing
    here compares weights): the bundle names the base instead of holding its weights. The LLM's LoRA
    and a "weighted" encoder's layer weights, which are trained, are saved either way.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if encoder_base is None:
        save_encoder(model.encoder, path / "encoder")
        encoder_meta = {"dir": "encoder"}
    else:
        encoder_meta = _save_encoder_reference(model.encoder, encoder_base, path)
    save_compressor(model.compressor, path / "compressor")
    save_file({k: v.contiguous() for k, v in model.adapter.state_dict().items()}, path / "adapter.safetensors")
    has_lora = getattr(model.llm, "has_lora", False)
    if llm_base is None:
        save_llm(model.llm, path / "llm")
        llm_meta = {"dir": "llm", "lora": "lora" if has_lora else None}
    else:
        llm_base.validate()
        llm_meta = {"base": llm_base.to_json(), "lora": "lora" if has_lora else None}
    llm_meta["prompt_transcript"] = model.llm.prompt_transcript
    if has_lora:
        save_lora(model.llm, path / "lora")
    draft_meta = None
    if model.draft is not None:
        save_llm(model.draft.llm, path / "draft" / "llm")
        draft_meta = {"dir": "draft", "adapter": None}
        if model.draft.adapter is not None:
            adapter_state = {k: v.contiguous() for k, v in model.draft.adapter.state_dict().items()}
            save_file(adapter_state, path / "draft" / "adapter.safetensors")
            draft_meta["adapter"] = dataclasses.asdict(model.draft.adapter.config)
    meta = {
        "format_version": BUNDLE_FORMAT_VERSION,
        "encoder": encoder_meta,
        "compressor": {"dir": "compressor"},
        "adapter": dataclasses.asdict(model.adapter.config),
        "llm": llm_meta,
        "draft": draft_meta,
        "max_chunk_s": model.max_chunk_s,
        "trained": model.info.trained,
        "tasks": list(model.info.tasks),
        "provenance": model.info.provenance,
    }
    (path / "spokenlm.json").write_text(json.dumps(meta, indent=2) + "\n")
    return path


ENCODER_LAYER_WEIGHTS = "encoder_layer_weights.safetensors"  # a base encoder's trained layer mix


def _save_encoder_reference(encoder: nn.Module, base: BaseRef, path: Path) -> dict:
    """The spokenlm.json entry naming `base` as the encoder (and its trained layer mix, if any)."""
    base.validate()
    kind = next((name for name, k in ENCODER_KINDS.items() if isinstance(encoder, k.module_type)), None)
    if kind not in BASE_ENCODER_LOADERS:
        kinds = " or ".join(BASE_ENCODER_LOADERS)
        raise ValueError(f"a {type(encoder).__name__} cannot be named by a base; bases are {kinds} encoders")
    meta = {"base": base.to_json(), "kind": kind, "layer": encoder.config.layer}
    if getattr(encoder.config, "bf16", False):  # Whisper: runs under bfloat16 autocast (as it was trained on)
        meta["bf16"] = True
    if getattr(encoder, "layer_logits", None) is not None:  # layer="weighted": (L + 1,) learned logits
        save_file({"layer_logits": encoder.layer_logits.detach().cpu().contiguous()}, path / ENCODER_LAYER_WEIGHTS)
        meta["layer_weights"] = ENCODER_LAYER_WEIGHTS
    return meta


class BundleError(ValueError):
    """A bundle directory that cannot be loaded, with the reason."""


def read_bundle_meta(path: str | Path) -> dict:
    """A bundle's spokenlm.json, checked."""
    meta_path = Path(path) / "spokenlm.json"
    if not meta_path.is_file():
        raise BundleError(f"{path} is not a spokenlm bundle: spokenlm.json is missing")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise BundleError(f"{meta_path} is not valid JSON: {e}") from e
    version = meta.get("format_version")
    if version != BUNDLE_FORMAT_VERSION:
        raise BundleError(f"{meta_path}: unsupported bundle format_version {version!r}, expected {BUNDLE_FORMAT_VERSION}")
    return meta


# One loader per part, so a process (a Ray actor) that runs one stage loads only its part.


def bundle_bases(path: str | Path) -> list[BaseRef]:
    """The pretrained bases a bundle names (encoder first), checked; empty when it holds every part."""
    meta = read_bundle_meta(path)
    return [_base_ref(path, meta, part) for part in ("encoder", "llm") if "base" in _part(path, meta, part)]


def _part(path: str | Path, meta: dict, name: str) -> dict:
    part = meta.get(name)
    if not isinstance(part, dict) or ("dir" in part) == ("base" in part):
        raise BundleError(f"{Path(path) / 'spokenlm.json'}: {name!r} needs one of 'dir' or 'base', got {part!r}")
    return part


def _base_ref(path: str | Path, meta: dict, name: str) -> BaseRef:
    try:
        return BaseRef.from_json(meta[name]["base"])
    except BaseError as e:
        raise BundleError(f"{Path(path) / 'spokenlm.json'}: {name}.base: {e}") from e


def load_bundle_encoder(path: str | Path) -> tuple[nn.Module, float]:
    """The encoder of a bundle, in eval mode, and the bundle's max_chunk_s."""
    meta = read_bundle_meta(path)
    part = _part(path, meta, "encoder")
    if "dir" in part:
        return load_encoder(Path(path) / part["dir"]).eval(), float(meta["max_chunk_s"])
    kind, layer = part.get("kind"), part.get("layer", "last")
    if kind not in BASE_ENCODER_LOADERS:
        raise BundleError(
            f"{Path(path) / 'spokenlm.json'}: encoder kind {kind!r} cannot be loaded from a base; "
            f"expected one of {', '.join(BASE_ENCODER_LOADERS)}"
        )
    options = {"bf16": True} if part.get("bf16") else {}
    encoder = BASE_ENCODER_LOADERS[kind](resolve_base(_base_ref(path, meta, "encoder"), bundle=path), layer=layer, **options)
    if part.get("layer_weights"):
        with torch.no_grad():
            encoder.layer_logits.copy_(_load_safetensors(Path(path) / part["layer_weights"])["layer_logits"])
    return encoder.eval(), float(meta["max_chunk_s"])


def load_bundle_compressor(path: str | Path) -> tuple[nn.Module, Adapter]:
    """The compressor and adapter of a bundle, in eval mode."""
    meta = read_bundle_meta(path)
    compressor = load_compressor(Path(path) / meta["compressor"]["dir"])
    adapter = build_adapter(AdapterConfig(**meta["adapter"]))
    adapter.load_state_dict(_load_safetensors(Path(path) / "adapter.safetensors"))
    return compressor.eval(), adapter.eval()


def load_bundle_llm(path: str | Path) -> SpeechLLM:
    """The decoder LLM of a bundle (its LoRA applied, when it has one), in eval mode."""
    meta = read_bundle_meta(path)
    part = _part(path, meta, "llm")
    if "dir" in part:
        llm = load_llm(Path(path) / part["dir"])
    else:  # a GGUF file or an HF dir of a pip package; a GGUF file is de-quantized once, then cached
        llm = load_llm(resolve_base(_base_ref(path, meta, "llm"), bundle=path))
    if part.get("lora"):
        llm = load_lora(llm, Path(path) / part["lora"])
    llm.prompt_transcript = bool(part.get("prompt_transcript", False))
    return llm.eval()


def load_bundle_draft(path: str | Path) -> DraftLM | None:
    """The bundle's draft LM for speculative decoding, in eval mode; None when it has none."""
    meta = read_bundle_meta(path)
    draft_meta = meta.get("draft")
    if not draft_meta:
        return None
    draft_dir = Path(path) / draft_meta["dir"]
    adapter = None
    if draft_meta.get("adapter"):
        adapter = build_adapter(AdapterConfig(**draft_meta["adapter"]))
        adapter.load_state_dict(_load_safetensors(draft_dir / "adapter.safetensors"))
    return DraftLM(llm=load_llm(draft_dir / "llm"), adapter=adapter).eval()


def load_bundle(path: str | Path) -> SpeechLM:
    meta = read_bundle_meta(path)
    encoder, max_chunk_s = load_bundle_encoder(path)
    compressor, adapter = load_bundle_compressor(path)
    info = BundleInfo(
        trained=bool(meta.get("trained", False)),
        tasks=tuple(meta.get("tasks", TASK_NAMES)),
        provenance=meta.get("provenance", {}),
    )
    model = SpeechLM(
        encoder=encoder,
        compressor=compressor,
        adapter=adapter,
        llm=load_bundle_llm(path),
        max_chunk_s=max_chunk_s,
        info=info,
        draft=load_bundle_draft(path),
    )
    return model.eval()


def _load_safetensors(file: Path) -> dict[str, Tensor]:
    if not file.is_file():
        raise BundleError(f"missing weights file {file} (bundles hold safetensors only; pickles are refused)")
    return load_file(str(file))
