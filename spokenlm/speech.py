"""The speech half of the forward pass: recordings -> chunks -> encoder -> compressor -> adapter.

`SpeechTokens` is the one value for compressed speech of whole recordings, from the compressor on:
its tokens (and, once adapted, the adapter's output), their times, the CTC transcript and its
character times, and the time each stage took. It is what `SpeechLM.encode_recordings` returns, what
the Serve Encoder deployment hands the LLM deployment (one recording at a time: `item`, `batch`), and
what the Ray stage actors pass along; the feature cache and the speechlm recipe read its tokens.

Long recordings are cut at pauses into chunks of at most `max_chunk_s`; each chunk is encoded and
compressed on its own and the compressed tokens are concatenated in order, with their times kept.
The LLM thus sees the whole recording without any attention over its raw frames (the restricted
self-attention idea of long-form speech summarization, Sharma et al., 2022).

Not here: the LLM half (`spokenlm.model.decode_speech` / `stream_speech`).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor, nn

from spokenlm.audio import SAMPLE_RATE, batch_audio, split_on_silence
from spokenlm.compress.base import Compressor
from spokenlm.encoders.base import EncoderOutput, SpeechEncoder
from spokenlm.transcriber import ChunkReadings, WhisperTranscriber, choose_prompt_texts

MAX_CHUNKS_PER_BATCH = 8  # chunks per encoder forward pass


@dataclass(frozen=True)
class ChunkBatch:
    """One encoder forward pass: up to max_chunks_per_batch chunks from one or more recordings."""

    items: list[int]  # recording index of each chunk, in batch order
    starts_s: list[float]  # offset of each chunk in its recording
    encoded: EncoderOutput  # features (B, T, D), lengths (B,); hidden_states dropped unless kept
    audio: list[Tensor] = field(default_factory=list)  # each chunk's samples (S,), on the CPU, when kept: a transcriber reads them


@dataclass(frozen=True)
class SpeechTokens:
    """Compressed speech of whole recordings, chunks joined; see the module docstring."""

    embeddings: Tensor  # (B, N, D_enc) right-padded
    lengths: Tensor  # (B,) tokens per recording
    spans_s: list[list[tuple[float, float]]]  # per recording, per token: seconds in the recording
    durations_s: list[float]
    transcripts: list[str] | None  # CTC transcripts (greedy, or its word-LM beam search) when the compressor has a CTC head
    char_times: list[list[tuple[str, float, float]]] | None  # per recording: (char, start_s, end_s)
    projected: Tensor | None = None  # (B, N, D_llm) the adapter's output, once adapted (`adapt`)
    prompt_texts: list[str] | None = None
    """Per recording: the transcript the hybrid prompt carries when the bundle has a transcriber (each
    chunk's reading chosen between Whisper's and the CTC head's: `spokenlm.transcriber`); None: the
    CTC transcript."""
    readings: list[list[ChunkReadings]] | None = None  # per recording, per chunk: both readings, scored
    timing_ms: list[dict[str, float]] = field(default_factory=list)  # per recording: ms per stage so far

    @property
    def heard(self) -> list[str] | None:
        """Per recording, the transcript the prompt reads: the transcriber's (`prompt_texts`), else
        the CTC head's; None with neither."""
        return self.prompt_texts if self.prompt_texts is not None else self.transcripts

    @property
    def tokens_per_second(self) -> list[float]:
        return [n / d for n, d in zip(self.lengths.tolist(), self.durations_s)]

    def item(self, i: int) -> SpeechTokens:
        """Recording i alone (B = 1), its tensors on the CPU: what one request carries between processes."""
        n = int(self.lengths[i])

        def one(t: Tensor | None) -> Tensor | None:
            return None if t is None else t[i : i + 1, :n].detach().cpu().clone()

        return SpeechTokens(
            embeddings=one(self.embeddings),
            lengths=self.lengths[i : i + 1].cpu().clone(),
            spans_s=[self.spans_s[i]],
            durations_s=[self.durations_s[i]],
            transcripts=None if self.transcripts is None else [self.transcripts[i]],
            char_times=None if self.char_times is None else [self.char_times[i]],
            projected=one(self.projected),
            prompt_texts=None if self.prompt_texts is None else [self.prompt_texts[i]],
            readings=None if self.readings is None else [self.readings[i]],
            timing_ms=[dict(self.timing_ms[i])] if self.timing_ms else [],
        )

    @staticmethod
    def batch(items: Sequence[SpeechTokens]) -> SpeechTokens:
        """Recordings of several SpeechTokens as one batch (right-padded again), in order."""
        if not items:
            raise ValueError("got no SpeechTokens to batch")

        def rows(get) -> list[Tensor]:
            return [t[j, : int(s.lengths[j])] for s in items for t in [get(s)] for j in range(len(s.lengths))]

        def cat(name: str) -> list | None:
            parts = [getattr(s, name) for s in items]
            return None if any(p is None for p in parts) else [x for p in parts for x in p]

        projected = None
        if all(s.projected is not None for s in items):
            projected = nn.utils.rnn.pad_sequence(rows(lambda s: s.projected), batch_first=True)
        return SpeechTokens(
            embeddings=nn.utils.rnn.pad_sequence(rows(lambda s: s.embeddings), batch_first=True),
            lengths=torch.cat([s.lengths.cpu() for s in items]),
            spans_s=cat("spans_s"),
            durations_s=cat("durations_s"),
            transcripts=cat("transcripts"),
            char_times=cat("char_times"),
            projected=projected,
            prompt_texts=cat("prompt_texts"),
            readings=cat("readings"),
            timing_ms=cat("timing_ms") or [],
        )


# --- the stages ------------------------------------------------------------------------------------


@torch.inference_mode()
def encode_speech(
    encoder: SpeechEncoder,
    compressor: Compressor,
    adapter: nn.Module,
    waves: Sequence[Tensor],
    *,
    max_chunk_s: float,
    max_chunks_per_batch: int = MAX_CHUNKS_PER_BATCH,
    uncompressed: bool = False,
    transcriber: WhisperTranscriber | None = None,
) -> SpeechTokens:
    """Mono 16 kHz recordings (S,) -> adapted SpeechTokens, timed per stage (encoder, compress,
    transcriber, adapter). uncompressed: the adapter reads every encoder frame instead of the
    compressor's tokens (a comparison for dim-preserving compressors; the CTC transcript is still the
    compressor's). transcriber: each chunk also read by Whisper, the prompt taking the better reading
    (`join_chunks`)."""
    t0 = time.perf_counter()
    batches = encode_chunks(encoder, waves, max_chunk_s=max_chunk_s, max_chunks_per_batch=max_chunks_per_batch,
                            keep_audio=transcriber is not None)  # fmt: skip
    encoder_ms = (time.perf_counter() - t0) * 1e3
    durations = [wav.shape[-1] / SAMPLE_RATE for wav in waves]
    timing = [{"encoder": encoder_ms} for _ in waves]
    return compress_speech(compressor, adapter, batches, durations, timing_ms=timing, uncompressed=uncompressed,
                           transcriber=transcriber)  # fmt: skip


@torch.inference_mode()
def compress_speech(
    compressor: Compressor,
    adapter: nn.Module,
    batches: Sequence[ChunkBatch],
    durations_s: Sequence[float],
    *,
    timing_ms: Sequence[dict[str, float]] | None = None,
    uncompressed: bool = False,
    transcriber: WhisperTranscriber | None = None,
) -> SpeechTokens:
    """Encoded chunks -> joined, adapted SpeechTokens (`join_chunks`, then `adapt`); `timing_ms`:
    per recording, the stages before this one (they come first in the result's timing)."""
    speech = join_chunks(compressor, batches, durations_s, transcriber=transcriber)
    if uncompressed:
        speech = _every_frame(speech, batches)
    if timing_ms is not None:
        speech = dataclasses.replace(speech, timing_ms=[dict(t) | s for t, s in zip(timing_ms, speech.timing_ms)])
    return adapt(adapter, speech)


@torch.inference_mode()
def encode_chunks(
    encoder: SpeechEncoder,
    waves: Sequence[Tensor],
    *,
    max_chunk_s: float,
    max_chunks_per_batch: int = MAX_CHUNKS_PER_BATCH,
    keep_hidden_states: bool = False,
    keep_audio: bool = False,
) -> list[ChunkBatch]:
    """Cut each recording (S,) at pauses into chunks of at most max_chunk_s and encode them in batches.
    keep_audio: each batch carries its chunks' samples too (`ChunkBatch.audio`, for a transcriber)."""
    device = next(encoder.parameters()).device
    chunks = [(i, c) for i, wav in enumerate(waves) for c in split_on_silence(wav, max_chunk_s=max_chunk_s)]
    batches = []
    for first in range(0, len(chunks), max_chunks_per_batch):
        group = chunks[first : first + max_chunks_per_batch]
        audio = batch_audio([c.wav.to(device) for _, c in group])
        encoded: EncoderOutput = encoder(audio.wav, audio.lengths)
        if not keep_hidden_states:  # (L, B, T, D) is large and no later stage reads it
            encoded = dataclasses.replace(encoded, hidden_states=None)
        kept = [c.wav.detach().cpu() for _, c in group] if keep_audio else []
        batches.append(ChunkBatch(items=[i for i, _ in group], starts_s=[c.start_s for _, c in group], encoded=encoded,
                                  audio=kept))  # fmt: skip
    return batches


@torch.inference_mode()
def join_chunks(
    compressor: Compressor,
    batches: Sequence[ChunkBatch],
    durations_s: Sequence[float],
    *,
    transcriber: WhisperTranscriber | None = None,
) -> SpeechTokens:
    """Compress every chunk batch and join each recording's tokens in time order (its CTC text too,
    where the compressor gives its characters: `CompressedOutput.chars`). transcriber: each chunk is
    read by Whisper too, both readings are scored by both models, and the prompt's transcript takes
    the chosen one per chunk (`spokenlm.transcriber`; timed as "transcriber")."""
    t0 = time.perf_counter()
    parts: list[list[tuple[Tensor, list, str | None, list]]] = [[] for _ in durations_s]
    chunks: list[tuple[int, Tensor | None, str | None, Tensor | None]] = []  # what a transcriber reads, in chunk order
    for batch in batches:
        out = compressor(batch.encoded)
        rate = out.frame_rate_hz
        for j, (item, start_s) in enumerate(zip(batch.items, batch.starts_s)):
            n = int(out.lengths[j])
            spans = [(start_s + s, start_s + e) for s, e in out.span_seconds(j)]
            text, chars = None, []
            if out.chars is not None:
                text = "".join(c.char for c in out.chars[j])
                chars = [(c.char, start_s + c.start_frame / rate, start_s + c.end_frame / rate) for c in out.chars[j]]
            parts[item].append((out.embeddings[j, :n], spans, text, chars))
            if transcriber is not None:
                log_probs = None if out.ctc_log_probs is None else out.ctc_log_probs[j, : int(batch.encoded.lengths[j])]
                chunks.append((item, batch.audio[j] if batch.audio else None, text, log_probs))

    embeddings = [torch.cat([p[0] for p in item_parts]) for item_parts in parts]
    has_ctc = all(p[2] is not None for item_parts in parts for p in item_parts)
    compress_ms = (time.perf_counter() - t0) * 1e3
    timing = [{"compress": compress_ms} for _ in durations_s]
    prompt_texts = readings = None
    if transcriber is not None:
        t0 = time.perf_counter()
        readings = _read_chunks(transcriber, compressor, chunks, len(durations_s))
        prompt_texts = choose_prompt_texts(readings, transcriber.config)
        timing = [t | {"transcriber": (time.perf_counter() - t0) * 1e3} for t in timing]
    return SpeechTokens(
        embeddings=nn.utils.rnn.pad_sequence(embeddings, batch_first=True),  # (B, N, D_enc)
        lengths=torch.tensor([e.shape[0] for e in embeddings], dtype=torch.long),
        spans_s=[[s for p in item_parts for s in p[1]] for item_parts in parts],
        durations_s=list(durations_s),
        transcripts=[" ".join(t for p in ps if (t := p[2])) for ps in parts] if has_ctc else None,
        char_times=[_join_char_times(ps) for ps in parts] if has_ctc else None,
        prompt_texts=prompt_texts,
        readings=readings,
        timing_ms=timing,
    )


def _read_chunks(transcriber: WhisperTranscriber, compressor: Compressor, chunks, recordings: int) -> list[list[ChunkReadings]]:
    """Per recording, its chunks' two readings scored (`WhisperTranscriber.score`)."""
    vocab = getattr(compressor, "vocab", None)
    if vocab is None or any(text is None or log_probs is None for _, _, text, log_probs in chunks):
        raise ValueError("a transcriber needs a CTC compressor: its transcript is the other reading, its head a judge")
    if any(audio is None for _, audio, _, _ in chunks):
        raise ValueError("a transcriber needs each chunk's audio: encode with encode_chunks(keep_audio=True)")
    scored = transcriber.score([c[1] for c in chunks], [c[2] for c in chunks], [c[3] for c in chunks], vocab,
                               lm_path=getattr(compressor, "lm_path", None))  # fmt: skip
    readings: list[list[ChunkReadings]] = [[] for _ in range(recordings)]
    for (item, *_), reading in zip(chunks, scored):
        readings[item].append(reading)
    return readings


@torch.inference_mode()
def adapt(adapter: nn.Module, speech: SpeechTokens) -> SpeechTokens:
    """`speech` with the adapter's output (B, N, D_llm) in `projected`, timed ("adapter")."""
    t0 = time.perf_counter()
    device = next(adapter.parameters()).device
    projected = adapter(speech.embeddings.to(device))
    adapter_ms = (time.perf_counter() - t0) * 1e3
    timing = [t | {"adapter": adapter_ms} for t in (speech.timing_ms or [{} for _ in speech.durations_s])]
    return dataclasses.replace(speech, projected=projected, timing_ms=timing)


def _every_frame(speech: SpeechTokens, batches: Sequence[ChunkBatch]) -> SpeechTokens:
    """`speech` with every valid encoder frame of each recording as its tokens, chunks joined."""
    frames: list[list[Tensor]] = [[] for _ in speech.durations_s]
    spans: list[list[tuple[float, float]]] = [[] for _ in speech.durations_s]
    for batch in batches:
        rate = batch.encoded.frame_rate_hz
        for j, (item, start_s) in enumerate(zip(batch.items, batch.starts_s)):
            n = int(batch.encoded.lengths[j])
            frames[item].append(batch.encoded.features[j, :n])
            spans[item] += [(start_s + t / rate, start_s + (t + 1) / rate) for t in range(n)]
    joined = [torch.cat(f) for f in frames]
    return dataclasses.replace(
        speech,
        embeddings=nn.utils.rnn.pad_sequence(joined, batch_first=True),  # (B, T, D_enc)
        lengths=torch.tensor([f.shape[0] for f in joined], dtype=torch.long),
        spans_s=spans,
    )


def _join_char_times(parts) -> list[tuple[str, float, float]]:
    joined: list[tuple[str, float, float]] = []
    for _, _, _, chars in parts:
        if joined and chars:  # chunks are joined by a space, as their transcripts are
            joined.append((" ", joined[-1][2], chars[0][1]))
        joined.extend(chars)
    return joined
