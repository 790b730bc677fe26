"""SpeechLM: encoder -> compressor -> adapter -> decoder LLM, its forward pass, its one builder, and
the bundle format.

`SpeechLM` receives its parts, typed by their seams (`SpeechEncoder`, `Compressor`, `Adapter`,
`SpeechLLM`). Its forward pass is written once, in two halves that run in one process
(`SpeechLM.run` / `stream`) or in two (the Serve deployments, the Ray stage actors):
`spokenlm.speech.encode_speech` (recordings -> adapted `SpeechTokens`) and `decode_speech` /
`stream_speech` here (SpeechTokens + task requests -> `RunOutput`s, or text as it is decoded).

`build_speechlm(config)` is the only code that reads a `SpeechLMConfig`; `save_bundle` /
`load_bundle` write and read the directory layout of DESIGN.md §3:

    DIR/spokenlm.json        format version, the SpeechLMConfig, component metadata, task list, provenance
    DIR/encoder/             encoder.json + model.safetensors (an HF Wav2Vec2 dir for that backend)
    DIR/compressor/          compressor.json + model.safetensors
    DIR/adapter.safetensors
    DIR/llm/                 a Hugging Face causal-LM dir (config.json, model.safetensors, tokenizer)
    DIR/lora/                a peft adapter dir (optional)
    DIR/draft/               optional draft LM for speculative decoding: llm/ (an HF dir) and, when the
                             draft hears the speech, adapter.safetensors (target speech -> draft width)
    DIR/whisper_lora/        optional: the transcriber's Whisper-decoder LoRA (`"transcriber"` in spokenlm.json)
    DIR/heads/TASK/          optional task heads (`"llm": {"heads": {TASK: "heads/TASK"}}`)
    DIR/translator/          optional Apertium translator: translator.json + truecase.json (`"llm": {"translator"}`)

The encoder and the LLM may instead be named by the pretrained base they are (spokenlm/bases.py):
`"llm": {"base": {"package", "version", "path", "sha256"}, "lora": "lora"}`, `"encoder": {"base": {...},
"kind": "whisper", "layer": "last"}`; then the bundle holds only what was trained (CTC head, adapter,
LoRA), and loading finds the base with `resolve_base`, verified by its hash.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from spokenlm.adapter import Adapter, AdapterConfig, build_adapter
from spokenlm.bases import BaseError, BaseRef, resolve_base
from spokenlm.compress import (
    build_compressor,
    compressor_config_from_json,
    compressor_config_to_json,
    load_compressor,
    save_compressor,
    with_compressor_config,
)
from spokenlm.compress.base import Compressor
from spokenlm.compress.ctc import CTCCompressorConfig
from spokenlm.compress.stack import StackCompressorConfig
from spokenlm.compress.syllable import SyllableCompressorConfig
from spokenlm.decoding import stream_tokens
from spokenlm.encoders import (
    build_encoder,
    encoder_config_from_json,
    encoder_config_to_json,
    encoder_kind,
    load_encoder,
    save_encoder,
    with_config,
)
from spokenlm.encoders.base import SpeechEncoder
from spokenlm.encoders.dinosr import DinoSREncoderConfig
from spokenlm.encoders.sylber import SylberEncoderConfig
from spokenlm.encoders.wav2vec2 import Wav2Vec2EncoderConfig, load_wav2vec2_encoder
from spokenlm.encoders.whisper import WhisperEncoderConfig, load_whisper_encoder
from spokenlm.grounding import answer_spans, ground, is_heard
from spokenlm.heads import HeadError, TaskHead, load_head, save_head
from spokenlm.lm import (
    DraftLM,
    GenerationConfig,
    LLMSpeedups,
    LookupDraft,
    LoRAConfig,
    SpeechLLM,
    add_lora,
    build_llm,
    load_llm,
    load_lora,
    save_llm,
    save_lora,
    speed_up_llm,
)
from spokenlm.output import RunOutput
from spokenlm.speech import (  # the speech half; re-exported: the feature cache and recipes import them from here
    ChunkBatch,
    SpeechTokens,
    encode_chunks,
    encode_speech,
    join_chunks,
)
from spokenlm.tasks import TASK_NAMES, TASKS, Answer, Entities, TaskRequest, TaskResult, build_prompt, parse_output
from spokenlm.transcriber import (
    WINDOW_S,
    TranscriberConfig,
    WhisperTranscriber,
    load_transcriber,
    transcriber_config_from_json,
    transcriber_config_to_json,
)
from spokenlm.translator import TranslatorError, load_translator, save_translator

__all__ = [
    "BundleError", "BundleInfo", "ChunkBatch", "LLMConfig", "Pretrained", "RunOutput", "SpeechLM", "SpeechLMConfig",
    "SpeechTokens", "build_speechlm", "bundle_bases", "decode_speech", "decoding_inputs", "drop_bundle_head",
    "encode_chunks", "join_chunks",
    "load_bundle", "load_bundle_compressor", "load_bundle_draft", "load_bundle_encoder", "load_bundle_llm",
    "load_bundle_transcriber", "load_bundle_transcriber_config", "locate_entities", "locate_text",
    "read_bundle_meta", "request_prompts", "save_bundle", "set_bundle_asr_from_transcript", "set_bundle_grounded", "set_bundle_head",
    "set_bundle_transcriber", "set_bundle_translator",
    "stream_speech",
]  # fmt: skip

BUNDLE_FORMAT_VERSION = 1
# The encoder kinds a bundle may name by base: their loaders also read foreign checkpoint dirs (HF,
# CTranslate2, fairseq) and take the layer choice.
BASE_ENCODER_LOADERS = {"wav2vec2": load_wav2vec2_encoder, "whisper": load_whisper_encoder}

EncoderConfig = Wav2Vec2EncoderConfig | DinoSREncoderConfig | SylberEncoderConfig | WhisperEncoderConfig
CompressorConfig = CTCCompressorConfig | StackCompressorConfig | SyllableCompressorConfig


# --- configs ----------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Pretrained:
    """A part loaded from a directory (its own config and weights), instead of built from a config."""

    path: str
    """An encoder directory `load_encoder` reads (ours, HF Whisper / Wav2Vec2, CTranslate2), or a
    `save_compressor` directory."""

    overrides: dict = field(default_factory=dict)
    """Config fields replaced with the weights kept: an encoder's (e.g. {"bf16": true}; see `with_config`)
    or a compressor's (e.g. {"mode": "blank_removal"}; see `with_compressor_config`)."""

    def validate(self) -> None:
        if not self.path:
            raise ValueError("Pretrained needs a path")


@dataclass(frozen=True, kw_only=True)
class LLMConfig:
    """Where the decoder LLM comes from: a checkpoint directory, or an architecture to initialise."""

    path: str | None = None
    """A Hugging Face causal-LM dir (weights + tokenizer) or a .gguf file."""

    architecture: dict | None = None
    """An HF config dict (with model_type) for a random init."""

    tokenizer: str | None = None
    """Tokenizer dir; required with `architecture`."""

    lora: LoRAConfig | None = None
    """Freeze the LLM and train LoRA adapters (None: no LoRA)."""

    prompt_transcript: bool = False
    """The hybrid prompt: the CTC transcript as text after the speech (`build_prompt(request, transcript)`)."""

    def validate(self) -> None:
        if (self.path is None) == (self.architecture is None):
            raise ValueError("LLMConfig needs exactly one of path or architecture")
        if self.architecture is not None and self.tokenizer is None:
            raise ValueError("LLMConfig with an architecture needs a tokenizer directory")
        if self.lora is not None:
            self.lora.validate()


@dataclass(frozen=True, kw_only=True)
class SpeechLMConfig:
    encoder: EncoderConfig | Pretrained
    compressor: CompressorConfig | Pretrained
    llm: LLMConfig
    adapter: AdapterConfig = AdapterConfig()
    """Its input_dim / output_dim are the compressor's and the LLM's: build_speechlm sets them."""

    max_chunk_s: float = 30.0
    """Long audio is split at pauses into chunks no longer than this."""

    def validate(self) -> None:
        self.encoder.validate()
        self.compressor.validate()
        self.llm.validate()
        dataclasses.replace(self.adapter, input_dim=self.adapter.input_dim or 1,
                            output_dim=self.adapter.output_dim or 1).validate()  # fmt: skip
        if not 1.0 <= self.max_chunk_s <= 600.0:
            raise ValueError(f"max_chunk_s must be within [1, 600] seconds, got {self.max_chunk_s}")


def config_to_json(config: SpeechLMConfig) -> dict:
    """The SpeechLMConfig as spokenlm.json holds it (`config_from_json` reads it back)."""

    def part(value, to_json) -> dict:
        return {"pretrained": dataclasses.asdict(value)} if isinstance(value, Pretrained) else to_json(value)

    return {
        "encoder": part(config.encoder, encoder_config_to_json),
        "compressor": part(config.compressor, compressor_config_to_json),
        "llm": dataclasses.asdict(config.llm),
        "adapter": dataclasses.asdict(config.adapter),
        "max_chunk_s": config.max_chunk_s,
    }


def config_from_json(data: dict) -> SpeechLMConfig:
    def part(value: dict, from_json):
        return Pretrained(**value["pretrained"]) if "pretrained" in value else from_json(value)

    llm = dict(data["llm"])
    if llm.get("lora") is not None:
        lora = llm["lora"]
        llm["lora"] = LoRAConfig(**(lora | {"target_modules": tuple(lora["target_modules"])}))
    return SpeechLMConfig(
        encoder=part(data["encoder"], encoder_config_from_json),
        compressor=part(data["compressor"], compressor_config_from_json),
        llm=LLMConfig(**llm),
        adapter=AdapterConfig(**data["adapter"]),
        max_chunk_s=float(data["max_chunk_s"]),
    )


@dataclass(frozen=True)
class BundleInfo:
    format_version: int = BUNDLE_FORMAT_VERSION
    trained: bool = False  # False: random weights, outputs are meaningless
    tasks: tuple[str, ...] = TASK_NAMES
    provenance: dict = field(default_factory=dict)  # how it was made: recipe, data, metrics


# --- the model ---------------------------------------------------------------------------------------


class SpeechLM(nn.Module):
    def __init__(
        self,
        *,
        encoder: SpeechEncoder,
        compressor: Compressor,
        adapter: Adapter,
        llm: SpeechLLM,
        max_chunk_s: float = 30.0,
        info: BundleInfo | None = None,
        draft: DraftLM | None = None,
        config: SpeechLMConfig | None = None,
        transcriber: WhisperTranscriber | None = None,
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
        self.config = config  # what build_speechlm built it from (None: assembled by hand); the bundle saves it
        if transcriber is not None and not llm.prompt_transcript:
            raise ValueError("a transcriber writes the hybrid prompt's transcript, but this LLM was trained without one")
        if transcriber is not None and max_chunk_s > WINDOW_S:
            raise ValueError(f"a transcriber reads {WINDOW_S:.0f}-s windows: max_chunk_s must be at most that, got {max_chunk_s}")
        self.transcriber = transcriber  # Whisper's reading of each chunk, judged against the CTC head's (spokenlm.transcriber)

    @torch.inference_mode()
    def encode_recordings(self, waves: Sequence[Tensor], *, uncompressed: bool = False) -> SpeechTokens:
        """Cut each recording (S,) at pauses, compress every chunk, join each recording's tokens, adapt
        them (`spokenlm.speech.encode_speech`)."""
        return encode_speech(self.encoder, self.compressor, self.adapter, waves, max_chunk_s=self.max_chunk_s,
                             uncompressed=uncompressed, transcriber=self.transcriber)  # fmt: skip

    @torch.inference_mode()
    def run(
        self,
        waves: Sequence[Tensor],
        requests: Sequence[TaskRequest],
        generation: GenerationConfig | None = None,
        *,
        recording: Sequence[int] | None = None,
        uncompressed: bool = False,
    ) -> list[RunOutput]:
        """Run task requests on mono 16 kHz recordings (S,): request i on recording i, or on
        `recording[i]` (several tasks on one recording: it is encoded once). uncompressed: the LLM
        reads every encoder frame (`encode_recordings`)."""
        if recording is None and len(waves) != len(requests):
            raise ValueError(f"got {len(waves)} recordings but {len(requests)} requests")
        if not requests:
            return []
        for request in requests:  # validate every request before any work
            build_prompt(request)
        _check_recording(recording, len(requests), len(waves))
        speech = self.encode_recordings(waves, uncompressed=uncompressed)
        return decode_speech(self.llm, speech, requests, generation or GenerationConfig(), draft=self.draft,
                             recording=recording)  # fmt: skip

    def stream(
        self, wave: Tensor, request: TaskRequest, generation: GenerationConfig | None = None
    ) -> Iterator[str | RunOutput]:
        """`run` of one request on one recording, as it is decoded: text deltas, then the RunOutput
        (`stream_speech`); the deltas join to the output's text."""
        build_prompt(request)
        speech = self.encode_recordings([wave])
        return stream_speech(self.llm, speech, request, generation or GenerationConfig(), draft=self.draft)


# --- the LLM half of the forward pass -----------------------------------------------------------------


def decode_speech(
    llm: SpeechLLM,
    speech: SpeechTokens,
    requests: Sequence[TaskRequest],
    generation: GenerationConfig,
    *,
    draft: DraftLM | None = None,
    recording: Sequence[int] | None = None,
) -> list[RunOutput]:
    """Decode request i on recording i of adapted `speech` (or on `recording[i]`) and parse it.

    Entities and answers get audio times from the CTC characters of their recording. With a `draft` (or
    `generation.ctc_draft`: a LookupDraft of the transcript each prompt reads, `decoding_inputs`),
    decoding is speculative (same output, faster). The LLM follows the prompt it was trained with
    (`request_prompts`).
    """
    t0 = time.perf_counter()
    rows = list(range(len(requests))) if recording is None else list(recording)
    texts = _direct_answers(llm, speech, requests, rows)  # checks rows
    todo = [k for k, text in enumerate(texts) if text is None]  # what the LLM decodes (the others are answered)
    if todo:
        prompts, projected, lengths, draft, _ = decoding_inputs(
            llm, speech, [requests[k] for k in todo], generation, [rows[k] for k in todo], draft
        )
        for k, o in zip(todo, llm.generate(prompts, projected, lengths, generation, draft=draft)):
            texts[k] = o.text
    for k in todo:
        texts[k] = _heard_answer(llm, speech, requests[k], rows[k], texts[k])
    return _run_outputs(llm, requests, texts, speech, rows, (time.perf_counter() - t0) * 1e3)


def _heard_answer(llm: SpeechLLM, speech: SpeechTokens, request: TaskRequest, row: int, text: str) -> str:
    """`text`, the LLM's reply to `request`; but for a QA request of a grounded bundle whose answer is
    like no span of the prompt's transcript, the span the LLM finds likeliest as its reply
    (spokenlm.grounding: extractive QA, the LLM scoring every run of a few words)."""
    heard = speech.heard
    if not llm.grounded or request.task != "qa" or heard is None or not heard[row].split() or is_heard(text, heard[row]):
        return text
    spans = answer_spans(heard[row])
    prompts, projected, lengths = _llm_inputs(llm, speech, [request], [row], "grounded QA")
    scores = llm.reply_log_probs(prompts[0], projected, lengths, spans)
    return spans[max(range(len(spans)), key=scores.__getitem__)]


def _direct_answers(llm: SpeechLLM, speech: SpeechTokens, requests, rows: list[int]) -> list[str | None]:
    """Per request, its answer text where the bundle answers without decoding: the prompt's
    transcript for ASR (`llm.asr_from_transcript`), its translation for translate requests into the
    translator's language (`llm.translator`), a task head's labels for a task with one (`llm.heads`);
    else None (the LLM decodes it)."""
    _check_recording(rows, len(requests), len(speech.durations_s))
    answers: list[str | None] = [None] * len(requests)
    translator = llm.translator
    translated = [k for k, r in enumerate(requests)
                  if translator is not None and r.task == "translate" and r.target_lang == translator.config.target_lang]  # fmt: skip
    asr = [k for k, r in enumerate(requests) if llm.asr_from_transcript and r.task == "asr"]
    if asr or translated:
        texts = speech.heard
        if texts is None:
            raise ValueError("this bundle answers ASR and translations from the prompt's transcript, but the compressor gave none")
        for k in asr:
            answers[k] = texts[rows[k]]
        if translated:  # one Apertium call for all of them
            for k, text in zip(translated, translator.translate([texts[rows[k]] for k in translated])):
                answers[k] = text
    for task, head in llm.heads.items():
        todo = [k for k, r in enumerate(requests) if r.task == task]
        if not todo:
            continue
        inputs = _llm_inputs(llm, speech, [requests[k] for k in todo], [rows[k] for k in todo], "a task head")
        states = llm.prompt_states(*inputs, head.config.pooling)
        for k, text in zip(todo, head.answer(states)):
            answers[k] = text
    return answers


def stream_speech(
    llm: SpeechLLM,
    speech: SpeechTokens,
    request: TaskRequest,
    generation: GenerationConfig,
    *,
    draft: DraftLM | None = None,
    recording: int = 0,
) -> Iterator[str | RunOutput]:
    """`decode_speech` of one request, as it is decoded: each new piece of text (a UTF-8 character is
    never split), then the RunOutput. Beam search gives its text at the end (its best prefix changes).
    A grounded bundle's RunOutput holds its answer to the transcript, which may differ from the text
    streamed (a QA answer heard nowhere becomes the likeliest span: `_heard_answer`)."""
    t0 = time.perf_counter()
    given = _direct_answers(llm, speech, [request], [recording])
    if given[0] is not None:  # the transcript or a head is the answer: all of it at once
        if given[0]:
            yield given[0]
        yield _run_outputs(llm, [request], given, speech, [recording], (time.perf_counter() - t0) * 1e3)[0]
        return
    prompts, projected, lengths, draft, rec = decoding_inputs(llm, speech, [request], generation, [recording], draft)
    ids: list[int] = []
    text = ""
    for (new,) in stream_tokens(llm, prompts, projected, lengths, generation, draft):
        ids += new
        decoded = llm.tokenizer.decode(ids, skip_special_tokens=True)
        if decoded != text and not decoded.endswith("\ufffd"):  # hold back half a UTF-8 character
            yield decoded[len(text) :] if decoded.startswith(text) else decoded
            text = decoded
    full = _heard_answer(llm, speech, request, rec[0], llm.tokenizer.decode(ids, skip_special_tokens=True))
    yield _run_outputs(llm, [request], [full], speech, rec, (time.perf_counter() - t0) * 1e3)[0]


def decoding_inputs(llm, speech: SpeechTokens, requests, generation: GenerationConfig, recording=None, draft=None):
    """What the LLM decodes request i with, as `decode_speech` gives it: the prompts (the hybrid one
    reads the transcriber's text where the bundle has one), (B, N, D_llm) speech and (B,) lengths
    (`_llm_inputs`), the draft (with `generation.ctc_draft` and no draft given: a LookupDraft of
    the text the prompt reads), and the recording index of each request."""
    generation.validate()
    recording = list(range(len(requests))) if recording is None else list(recording)
    prompts, projected, lengths = _llm_inputs(llm, speech, requests, recording, "decoding")
    opens = [TASKS[r.task].opens_with_transcript for r in requests]
    if draft is None and generation.ctc_draft and speech.prompt_texts is not None:  # what the prompt reads
        draft = LookupDraft([speech.prompt_texts[item] for item in recording], opens=opens)
    elif draft is None and generation.ctc_draft and speech.char_times is not None:
        draft = LookupDraft(["".join(c for c, _, _ in speech.char_times[item]) for item in recording], opens=opens)
    return prompts, projected, lengths, draft, recording


def _llm_inputs(llm, speech: SpeechTokens, requests, recording: list[int], what: str) -> tuple[list[str], Tensor, Tensor]:
    """Prompts, (B, N, D_llm) speech and (B,) lengths on the LLM's device, one row per request (request
    i reads recording[i]): what the LLM reads, to decode or for a task head (`what`, for the error)."""
    if speech.projected is None:
        raise ValueError(f"{what} needs adapted speech (SpeechTokens.projected); run the adapter first (adapt)")
    _check_recording(recording, len(requests), len(speech.durations_s))
    prompts = request_prompts(llm, requests, speech.char_times, recording, prompt_texts=speech.prompt_texts)  # validates every request
    projected, lengths = speech.projected, speech.lengths
    if recording != list(range(projected.shape[0])):
        index = torch.tensor(recording, device=projected.device)
        projected, lengths = projected[index], lengths.to(projected.device)[index]
    device = next(llm.parameters()).device
    return prompts, projected.to(device), lengths.to(device)


def _run_outputs(llm: SpeechLLM, requests, texts, speech: SpeechTokens, recording, llm_ms: float) -> list[RunOutput]:
    """The typed results of the LLM's (or the direct answers') `texts`: parsed, held to the prompt's
    transcript where the bundle is grounded (spokenlm.grounding), given audio times."""
    heard = speech.heard
    restore = llm.translator.truecase if llm.translator is not None else None
    outputs = []
    for request, text, item in zip(requests, texts, recording):
        result: TaskResult = parse_output(request, text)
        if llm.grounded and heard is not None:
            result = ground(result, heard[item], restore)
        if isinstance(result, Entities) and speech.char_times is not None:
            result = locate_entities(result, speech.char_times[item])
        if isinstance(result, Answer) and speech.char_times is not None:
            span = locate_text(result.text, speech.char_times[item])
            if span is not None:
                result = dataclasses.replace(result, start_s=span[0], end_s=span[1])
        timing = speech.timing_ms[item] if speech.timing_ms else {}
        outputs.append(
            RunOutput(
                request=request,
                result=result,
                transcript=speech.transcripts[item] if speech.transcripts is not None else None,
                duration_s=speech.durations_s[item],
                spans_s=tuple(speech.spans_s[item]),
                tokens_per_second=speech.tokens_per_second[item],
                timing_ms=timing | {"llm": llm_ms},
            )
        )
    return outputs


def _check_recording(recording: Sequence[int] | None, num_requests: int, num_recordings: int) -> None:
    if recording is None:
        return
    if len(recording) != num_requests:
        raise ValueError(f"got {num_requests} requests for {len(recording)} recording indices")
    bad = [i for i in recording if not 0 <= i < num_recordings]
    if bad:
        raise ValueError(f"recording indices {bad} are not among the {num_recordings} recordings")


def request_prompts(
    llm: SpeechLLM,
    requests: Sequence[TaskRequest],
    char_times: Sequence[list[tuple[str, float, float]]] | None,
    recording: Sequence[int] | None = None,
    *,
    prompt_texts: Sequence[str] | None = None,
) -> list[str]:
    """The prompt of each request: plain, or hybrid (the recording's transcript after the speech)
    when the LLM was trained so (`SpeechLLM.prompt_transcript`, from the bundle). The transcript is
    `prompt_texts[i]` where given (the bundle's transcriber chose it: `SpeechTokens.prompt_texts`),
    else the CTC transcript."""
    recording = list(range(len(requests))) if recording is None else list(recording)
    if not llm.prompt_transcript:
        return [build_prompt(r) for r in requests]
    if prompt_texts is not None:
        return [build_prompt(r, prompt_texts[i]) for r, i in zip(requests, recording)]
    if char_times is None:
        raise ValueError("this LLM was trained with the CTC transcript in its prompt, but the compressor gave none")
    return [build_prompt(r, "".join(c for c, _, _ in char_times[i])) for r, i in zip(requests, recording)]


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


def locate_text(text: str, char_times: list[tuple[str, float, float]] | None) -> list[float] | None:
    """[start_s, end_s] of the stretch of the CTC transcript that best matches `text`, or None.

    The longest common block (difflib) anchors the match; it is widened to the characters of `text`
    matched within one answer-length of it, so a few CTC misspellings do not split the span.
    """
    if not text or not char_times:
        return None
    ctc = "".join(c for c, _, _ in char_times)
    matcher = difflib.SequenceMatcher(None, text.lower(), ctc, autojunk=False)
    anchor = matcher.find_longest_match(0, len(text), 0, len(ctc))
    if anchor.size == 0:
        return None
    lo, hi = anchor.b, anchor.b + anchor.size - 1
    window = (anchor.b - len(text), anchor.b + anchor.size + len(text))  # CTC characters the answer may cover
    for block in matcher.get_matching_blocks():
        if block.size and window[0] <= block.b and block.b + block.size <= window[1]:
            lo, hi = min(lo, block.b), max(hi, block.b + block.size - 1)
    return [round(char_times[lo][1], 3), round(char_times[hi][2], 3)]


# --- building and the bundle ---------------------------------------------------------------------


def build_speechlm(config: SpeechLMConfig) -> SpeechLM:
    """Build (or load, for `Pretrained` parts and an LLM path) every part from `config`: the one place
    that reads a SpeechLMConfig. The parts are made in a fixed order (encoder, compressor, LLM, LoRA,
    adapter), so a seeded call gives the same random weights."""
    config.validate()
    if isinstance(config.encoder, Pretrained):
        source = config.encoder.path
        encoder = with_config(load_encoder(source), config.encoder.overrides, source=source)
    else:
        encoder = build_encoder(config.encoder)
    if isinstance(config.compressor, Pretrained):
        source = config.compressor.path
        compressor = with_compressor_config(load_compressor(source), config.compressor.overrides, source=source)
    else:
        compressor = build_compressor(config.compressor)
    if config.llm.path is not None:
        llm = load_llm(config.llm.path)
    else:
        from transformers import AutoTokenizer

        llm = build_llm(config.llm.architecture, AutoTokenizer.from_pretrained(config.llm.tokenizer))
    if config.llm.lora is not None:
        llm = add_lora(llm, config.llm.lora)
    llm.prompt_transcript = config.llm.prompt_transcript
    adapter = build_adapter(
        dataclasses.replace(config.adapter, input_dim=compressor.output_dim, output_dim=llm.model_dim)
    )
    return SpeechLM(encoder=encoder, compressor=compressor, adapter=adapter, llm=llm, max_chunk_s=config.max_chunk_s,
                    config=config)  # fmt: skip


def save_bundle(
    model: SpeechLM,
    path: str | Path,
    *,
    encoder_base: BaseRef | None = None,
    llm_base: BaseRef | None = None,
    weights_dtype: torch.dtype | None = None,
) -> Path:
    """Write `model` as a bundle directory (module docstring).

    encoder_base / llm_base: that part is the pretrained base, unchanged (the caller knows; nothing
    here compares weights): the bundle names the base instead of holding its weights. The LLM's LoRA
    and a "weighted" encoder's layer weights, which are trained, are saved either way.
    weights_dtype: the small trained parts (compressor, adapter, LoRA) store their floating weights in
    this dtype (torch.bfloat16 halves a bundle that must be committed); loading casts them back into
    the modules' own dtype. None: as they are.
    """
    if weights_dtype is not None and not (isinstance(weights_dtype, torch.dtype) and weights_dtype.is_floating_point):
        raise ValueError(f"weights_dtype must be a floating torch dtype or None, got {weights_dtype!r}")
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
    llm_meta["asr_from_transcript"] = model.llm.asr_from_transcript
    llm_meta["grounded"] = model.llm.grounded
    llm_meta["heads"] = {task: f"heads/{task}" for task in sorted(model.llm.heads)}
    for task, head in model.llm.heads.items():
        save_head(head, path / "heads" / task)
    if model.llm.translator is not None:
        save_translator(path / TRANSLATOR_DIR, model.llm.translator.config, model.llm.translator.truecase)
        llm_meta["translator"] = TRANSLATOR_DIR
    if has_lora:
        save_lora(model.llm, path / "lora")
    if weights_dtype is not None:
        small = [path / "compressor" / "model.safetensors", path / "adapter.safetensors"]
        for file in small + ([path / "lora" / "adapter_model.safetensors"] if has_lora else []):
            _cast_safetensors(file, weights_dtype)
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
        "config": None if model.config is None else config_to_json(model.config),
        "transcriber": None if model.transcriber is None else _bundle_transcriber(path, model.transcriber.config, model.transcriber.decoder_lora),
    }
    (path / "spokenlm.json").write_text(json.dumps(meta, indent=2) + "\n")
    return path


def _cast_safetensors(file: Path, dtype: torch.dtype) -> None:
    """Rewrite a safetensors file with its floating tensors in `dtype`, its metadata kept."""
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as f:
        metadata = f.metadata()
        state = {k: f.get_tensor(k) for k in f.keys()}
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    save_file(state, str(file), metadata=metadata)


ENCODER_LAYER_WEIGHTS = "encoder_layer_weights.safetensors"  # a base encoder's trained layer mix


def _save_encoder_reference(encoder: SpeechEncoder, base: BaseRef, path: Path) -> dict:
    """The spokenlm.json entry naming `base` as the encoder (and its trained layer mix, if any)."""
    base.validate()
    kind = encoder_kind(encoder)
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


def load_bundle_encoder(path: str | Path) -> tuple[SpeechEncoder, float]:
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


def load_bundle_compressor(path: str | Path) -> tuple[Compressor, Adapter]:
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
    llm.asr_from_transcript = bool(part.get("asr_from_transcript", False))
    llm.grounded = bool(part.get("grounded", False))
    for task, rel in (part.get("heads") or {}).items():
        llm.heads[task] = _bundle_head(path, task, rel, llm.model_dim)
    if part.get("translator"):
        try:
            llm.translator = load_translator(Path(path) / part["translator"])
        except (ValueError, TranslatorError) as e:
            raise BundleError(f"{path}: its translator: {e}") from e
    return llm.eval()


def _bundle_head(path: str | Path, task: str, rel: str, model_dim: int) -> TaskHead:
    where = Path(path) / rel
    try:
        head = load_head(where)
    except HeadError as e:
        raise BundleError(f"{path}: its {task} head: {e}") from e
    if head.config.task != task:
        raise BundleError(f"{path}: the head at {rel} answers {head.config.task!r}, not {task!r}")
    if head.config.model_dim != model_dim:
        raise BundleError(f"{path}: the {task} head reads states of size {head.config.model_dim}, "
                          f"but the bundle's LLM has model_dim {model_dim}")  # fmt: skip
    return head


def load_bundle_transcriber_config(path: str | Path) -> TranscriberConfig | None:
    """The bundle's transcriber settings (`spokenlm.transcriber`); None when its prompt reads the CTC
    transcript only."""
    meta = read_bundle_meta(path)
    if meta.get("transcriber") is None:
        return None
    try:
        return transcriber_config_from_json(meta["transcriber"], where=f"{Path(path) / 'spokenlm.json'}: transcriber")
    except (TypeError, ValueError) as e:
        raise BundleError(str(e)) from e


def load_bundle_transcriber(path: str | Path, *, cpu_threads: int | None = None) -> WhisperTranscriber | None:
    """The bundle's transcriber, loaded (its Whisper base resolved); None when it has none. `cpu_threads`
    overrides the bundle's CTranslate2 threads (a server's replica knows its share of the machine)."""
    config = load_bundle_transcriber_config(path)
    if config is not None and cpu_threads is not None:
        config = dataclasses.replace(config, cpu_threads=cpu_threads)
    return load_transcriber(config, bundle=path)


def set_bundle_transcriber(path: str | Path, config: TranscriberConfig | None) -> None:
    """Give a saved bundle a transcriber (or take it away: None), its weights untouched."""
    meta = read_bundle_meta(path)
    if config is not None:
        config.validate()
        if not meta.get("llm", {}).get("prompt_transcript"):
            raise BundleError(f"{path}: its LLM was trained without a transcript in the prompt; a transcriber has no use")
        if float(meta.get("max_chunk_s", 30.0)) > WINDOW_S:
            raise BundleError(f"{path}: a transcriber reads {WINDOW_S:.0f}-s windows, but the bundle cuts recordings "
                              f"into chunks of up to {meta['max_chunk_s']} s")  # fmt: skip
        if config.lm_weight > 0:
            from spokenlm.compress import read_compressor_config

            if getattr(read_compressor_config(Path(path) / meta["compressor"]["dir"]), "beam", None) is None:
                raise BundleError(f"{path}: lm_weight is {config.lm_weight}, but the bundle's compressor has no word LM "
                                  "(a compressor from the ctc-lm recipe has one)")  # fmt: skip
    lora = None
    if config is not None and config.decoder_lora is not None:
        lora = Path(config.decoder_lora)  # a path of the caller's (the transcriber recipe's OUT/transcriber.json names it)
        if not lora.is_absolute() and not lora.exists() and (Path(path) / lora).exists():
            lora = Path(path) / lora  # the bundle's own copy, set again
    meta["transcriber"] = None if config is None else _bundle_transcriber(Path(path), config, lora)
    if config is None or config.decoder_lora is None:
        shutil.rmtree(Path(path) / TRANSCRIBER_LORA_DIR, ignore_errors=True)
    (Path(path) / "spokenlm.json").write_text(json.dumps(meta, indent=2) + "\n")


TRANSCRIBER_LORA_DIR = "whisper_lora"  # a bundle's copy of its transcriber's decoder LoRA


def _bundle_transcriber(bundle: Path, config: TranscriberConfig, lora: Path | None) -> dict:
    """The transcriber's settings as a bundle keeps them: its decoder LoRA (at `lora`) copied into
    the bundle (TRANSCRIBER_LORA_DIR) and named relative to it, so the bundle moves whole."""
    if lora is None:
        return transcriber_config_to_json(dataclasses.replace(config, decoder_lora=None))
    from spokenlm.whisper_tune import ADAPTER_CONFIG, ADAPTER_WEIGHTS, read_decoder_lora

    read_decoder_lora(lora)  # a LoRA that cannot be applied is refused before the bundle changes
    dest = bundle / TRANSCRIBER_LORA_DIR
    if lora.resolve() != dest.resolve():
        tmp = bundle / f".{TRANSCRIBER_LORA_DIR}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
            shutil.copy2(lora / name, tmp / name)
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)
    return transcriber_config_to_json(dataclasses.replace(config, decoder_lora=TRANSCRIBER_LORA_DIR))


def set_bundle_asr_from_transcript(path: str | Path, on: bool) -> None:
    """Make a saved bundle answer ASR requests with its prompt's transcript (or decode them again)."""
    meta = read_bundle_meta(path)
    if on and not meta.get("llm", {}).get("prompt_transcript"):
        raise BundleError(f"{path}: its LLM reads no transcript in the prompt; there is none to answer ASR with")
    meta["llm"]["asr_from_transcript"] = bool(on)
    (Path(path) / "spokenlm.json").write_text(json.dumps(meta, indent=2) + "\n")


def set_bundle_grounded(path: str | Path, on: bool) -> None:
    """Hold a saved bundle's entities, QA answers and summaries to its prompt's transcript
    (spokenlm.grounding), or let them be as the LLM writes them."""
    meta = read_bundle_meta(path)
    if on and not meta.get("llm", {}).get("prompt_transcript"):
        raise BundleError(f"{path}: its LLM reads no transcript in the prompt; there is none to hold its answers to")
    meta["llm"]["grounded"] = bool(on)
    (Path(path) / "spokenlm.json").write_text(json.dumps(meta, indent=2) + "\n")


def set_bundle_head(path: str | Path, head_dir: str | Path) -> str:
    """Give a saved bundle a task head (a `spokenlm.heads.save_head` directory, copied into the
    bundle's heads/<task>/); that task is then answered by it. Returns the task."""
    meta = read_bundle_meta(path)
    try:
        config = load_head(head_dir).config  # its weights must read too, not only its config
    except HeadError as e:
        raise BundleError(str(e)) from e
    model_dim = int(meta["adapter"]["output_dim"])  # the adapter feeds the LLM: its output is the LLM's width
    if config.model_dim != model_dim:
        raise BundleError(f"{head_dir}: the head reads states of size {config.model_dim}, but {path}'s LLM has "
                          f"model_dim {model_dim}")  # fmt: skip
    if config.task not in meta.get("tasks", []):
        raise BundleError(f"{path}: the bundle does not do {config.task!r}; its tasks are {meta.get('tasks')}")
    target = Path(path) / "heads" / config.task
    if target.resolve() != Path(head_dir).resolve():
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        for name in ("head.json", "head.safetensors"):
            shutil.copyfile(Path(head_dir) / name, target / name)
    meta["llm"]["heads"] = {**(meta["llm"].get("heads") or {}), config.task: f"heads/{config.task}"}
    (Path(path) / "spokenlm.json").write_text(json.dumps(meta, indent=2) + "\n")
    return config.task


def drop_bundle_head(path: str | Path, task: str) -> None:
    """Take a task's head away from a saved bundle: the LLM decodes that task again."""
    meta = read_bundle_meta(path)
    heads = dict(meta["llm"].get("heads") or {})
    if task not in heads:
        raise BundleError(f"{path}: has no {task!r} head; its heads: {sorted(heads) or 'none'}")
    del heads[task]
    shutil.rmtree(Path(path) / "heads" / task, ignore_errors=True)
    meta["llm"]["heads"] = heads
    (Path(path) / "spokenlm.json").write_text(json.dumps(meta, indent=2) + "\n")


TRANSLATOR_DIR = "translator"  # a bundle's copy of its translator directory


def set_bundle_translator(path: str | Path, translator_dir: str | Path | None) -> None:
    """Give a saved bundle a translator (a `spokenlm.translator.save_translator` directory, copied into
    the bundle's translator/; it must load here: Apertium and its pair installed), or take it away
    (None): translate requests into its language are then answered by it from the prompt's transcript."""
    meta = read_bundle_meta(path)
    target = Path(path) / TRANSLATOR_DIR
    if translator_dir is None:
        shutil.rmtree(target, ignore_errors=True)
        meta["llm"].pop("translator", None)
    else:
        if "translate" not in meta.get("tasks", []):
            raise BundleError(f"{path}: the bundle does not do 'translate'; its tasks are {meta.get('tasks')}")
        if not meta.get("llm", {}).get("prompt_transcript"):
            raise BundleError(f"{path}: its LLM reads no transcript in the prompt; there is none to translate")
        try:
            translator = load_translator(translator_dir)  # one that cannot run is refused before the bundle changes
        except (ValueError, TranslatorError) as e:
            raise BundleError(str(e)) from e
        save_translator(target, translator.config, translator.truecase)  # as save_bundle writes it
        meta["llm"]["translator"] = TRANSLATOR_DIR
    (Path(path) / "spokenlm.json").write_text(json.dumps(meta, indent=2) + "\n")


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


def load_bundle(path: str | Path, *, speedups: LLMSpeedups | None = None) -> SpeechLM:
    """Every part of a bundle, as one SpeechLM in eval mode; `speedups`: inference-only changes to
    its LLM (`spokenlm.lm.LLMSpeedups`: merged LoRA, bf16, int8)."""
    meta = read_bundle_meta(path)
    encoder, max_chunk_s = load_bundle_encoder(path)  # first: a missing base is named in part order
    compressor, adapter = load_bundle_compressor(path)
    llm = load_bundle_llm(path)
    if speedups is not None:
        llm = speed_up_llm(llm, speedups)
    info = BundleInfo(
        trained=bool(meta.get("trained", False)),
        tasks=tuple(meta.get("tasks", TASK_NAMES)),
        provenance=meta.get("provenance", {}),
    )
    model = SpeechLM(
        encoder=encoder,
        compressor=compressor,
        adapter=adapter,
        llm=llm,
        max_chunk_s=max_chunk_s,
        info=info,
        draft=load_bundle_draft(path),
        config=None if meta.get("config") is None else config_from_json(meta["config"]),
        transcriber=load_bundle_transcriber(path),
    )
    return model.eval()


def _load_safetensors(file: Path) -> dict[str, Tensor]:
    if not file.is_file():
        raise BundleError(f"missing weights file {file} (bundles hold safetensors only; pickles are refused)")
    return load_file(str(file))
