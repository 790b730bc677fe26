"""A second reading of the audio for the hybrid prompt: the Whisper base's own decoder, and which of
the two readings the prompt takes, chosen by joint CTC / attention scoring.

The hybrid prompt carries a transcript as text after the speech tokens (`build_prompt(request,
transcript)`, as DeSTA2 does with its recognizer's). The CTC head this project trains on its synthetic
corpus reads those voices well but real ones poorly (LibriVox: 42 % WER), while the decoder of the
pinned Whisper tiny.en base, trained on real speech, reads LibriVox at ~7 % but the corpus's odder
synthetic voices and isolated FSDD digits worse, and hallucinates on some ("thank you" for a "two").

So every chunk of a recording (the same chunks, at most 30 s, the encoder reads) gets both readings,
and each is scored by both models, as joint CTC/attention decoders rescore their hypotheses (Watanabe
et al., 2017): the CTC head's log-likelihood of the text over the chunk's frames (all alignments, the
CTC loss) and the Whisper decoder's log-probability of its tokens given the chunk (forced decoding:
CTranslate2's `align`). The prompt takes the reading with the higher

    ctc_weight * ctc_log_likelihood + (1 - ctc_weight) * decoder_log_prob + length_bonus * words
      + lm_weight * word_lm_log_prob

(the last term: the CTC compressor's word LM, which its beam search already weighs the CTC reading
with; `ctc_weight`, `length_bonus` and `lm_weight` are picked on the dev split by the `transcriber` recipe), except that
an empty Whisper reading or a decoding loop (`max_tokens_per_second`) always loses. Each model checks
the other: Whisper's "thank you" for a spoken "two" has no CTC path worth the name, and the CTC head's
"neild spots" for "ill disposed" is a word sequence Whisper's decoder finds improbable, and the word LM
knows that "four" said alone is likelier than Whisper's "for". Measured on the dev recordings the recipe
reads (300 synthetic, 150 FSDD; each corpus weighing the same): 12.5 % WER (13.5 % without the LM
term), against 17.7 % for the CTC transcript alone, 31.6 % for Whisper's alone, 15.6 % for the rule
the joint one replaced (Whisper's reading where its own mean log-probability was >= -0.2), and 12.2 %
for the oracle that knows the reference.

With `beam_size` > 1 Whisper's decoder searches a beam, and with `num_hypotheses` > 1 the rule
weighs the beam's n best readings, not its best alone: each is scored as the first is, and the
highest joint score of all (the CTC reading's included) wins. The beam ranks its readings by the
decoder's length-normalized score alone; the CTC head and the word LM know what it does not. On both
of `make demo`'s LibriVox clips the right reading is the beam's second ("ill disposed" after "old
supposed", "amiable" after "immutable").

An empty reading has no tokens to score: its decoder log-probability is that of Whisper's no-speech
token at the first step, and its CTC log-likelihood that of the all-blank path.

Whisper reads 30-s windows; a chunk alone pays for all 30 s of encoder, as faster-whisper pays per
clip. With `pack_s`, short chunks share windows: in order, each followed by `pack_gap_s` of silence,
each starting on the 20-ms timestamp grid (`pack_windows`). The window is encoded once; each chunk is
then decoded from the timestamp of its start (the prompt ends in it) until a segment opens where the
next chunk begins (`cut_packed_reading`), all chunks of a batch in one `generate` call. A chunk whose
reading runs well into its neighbour's ("4, 9, 2" as one segment of three digits) is read again alone.
Its decoder scores are the forced log-probabilities of each text after that timestamp, on the
shared window.

Two settings spend less of Whisper's time. `attend_margin_s`: the decoder attends to the chunk's own
frames with a margin either side (and the window's last second, `TAIL_S`) instead of the whole
window; CTranslate2 computes the cross-attention keys and values of every decoding job over all the
frames it attends, which over 1500 frames costs several times the decoding of a short reading.
`confident_ctc`: a chunk whose CTC transcript the CTC head and the word LM are sure of
(`ctc_confidence`) is not read by Whisper at all.

The decoder need not be the base's own: `decoder_lora` names a LoRA the `whisper_tune` recipe
trained on the corpus's voices, over exactly what this module gives the decoder
(`WhisperTranscriber.decoder_examples`); it is merged into a cached copy of the base at load
(spokenlm.whisper_tune).

Decoding is CTranslate2's through faster-whisper's pieces (mel features, tokenizer, the suppressed
tokens), a pinned dependency already (the ASR peer users would pick): greedy at temperature 0 without
timestamps, like `WhisperModel.transcribe(temperature=0, without_timestamps=True)` on one window, but
with `batch_size` windows per decoder call rather than one recording per call.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
from torch import Tensor

from spokenlm.audio import SAMPLE_RATE

if TYPE_CHECKING:
    from spokenlm.compress.beam import SentenceLM
    from spokenlm.compress.vocab import CharVocab

TRANSCRIBER_FILE = "transcriber.json"  # in a bundle and in the transcriber recipe's OUT
WINDOW_S = 30.0  # Whisper reads 30-s windows: a chunk must fit in one
MAX_LENGTH = 448  # Whisper's decoder context (n_text_ctx of every released size), prompt included
TIME_STEP_S = 0.02  # Whisper's timestamp tokens: <|0.00|>, <|0.02|>, ...
TAIL_S = 1.0
"""`attend_margin_s` keeps the window's last second in what the decoder attends: in a 30-s window
it always had trailing silence (the padding) to attend to, and without it isolated digits loop
("two two two two two"; FSDD dev, Whisper's reading alone: WER 0.35 with it, 0.87 without)."""
SEGMENT_SLACK_S = 0.5  # Whisper's segment ends stray this far past the speech (measured up to ~0.35 s on LibriVox)
_RETIRED = {"min_logprob": "the confidence threshold was replaced by joint CTC/attention scoring (ctc_weight, "
                           "length_bonus): run the transcriber recipe again"}  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class TranscriberConfig:
    """How the prompt transcript is read: a CTranslate2 Whisper base (or dir) and the joint rule."""

    base: str | None = "whisper-tiny.en"
    """A pretrained base pinned in spokenlm/bases.py (`KNOWN_BASES`); or None and `path`."""

    path: str | None = None
    """A CTranslate2 Whisper directory (model.bin, tokenizer.json) instead of a base."""

    ctc_weight: float = 0.5
    """Weight of the CTC head's log-likelihood in the joint score; the Whisper decoder's gets 1 - it."""

    length_bonus: float = 0.0
    """Added to the joint score per word of the reading (> 0 favours the longer one)."""

    lm_weight: float = 0.0
    """Weight of the CTC compressor's word LM (its beam search's ARPA file): its natural-log
    probability of the reading, from <s> to </s>, added to the joint score. It tells homophones
    apart that both acoustic models hear alike ("four" / "for" said alone). 0: no LM term."""

    beam_size: int = 1
    num_hypotheses: int = 1
    """How many of the beam's best readings of a chunk the rule weighs (at most `beam_size`): the
    first and those of the next that differ from it and from the CTC reading (in a packed window, the
    ones that end where the chunk ends). 1: the beam's best alone."""

    compute_type: str = "int8"
    cpu_threads: int = 0  # 0: CTranslate2 chooses
    batch_size: int = 8  # Whisper windows per decoder call (the encoder reads one window per call)
    pack_s: float = 0.0
    """Whisper reads several chunks in one 30-s window: chunks in order, each followed by `pack_gap_s`
    of silence, until this many seconds; its reading is cut into the chunks' by segment timestamps
    (a chunk whose share is unclear is read again alone). One 30-s encoder pass then serves several
    short chunks, as it otherwise serves one. 0: one chunk per window."""

    pack_gap_s: float = 2.0
    """Silence between packed chunks: Whisper ends a segment there."""

    bf16_encoder: bool = False
    """Encode the windows with the same encoder weights in torch under bfloat16 autocast (read from
    model.bin by spokenlm.encoders.whisper) instead of CTranslate2's `compute_type`; the decoder stays
    CTranslate2's. On CPUs with AVX-512 BF16 it is ~1.5x faster than int8 and nearer float32 (mean
    relative difference from float32 1.3 %, int8's 5 %, on a 25-s window of the corpus)."""

    confident_ctc: float | None = None
    """Whisper does not read a chunk whose CTC transcript is this sure of itself: its CTC
    log-likelihood plus `lm_weight` times its word-LM log-probability, per second of audio
    (`ctc_confidence`), at least this (nats/s, <= 0). The prompt takes that transcript as it is; the
    chunk costs no encoder pass, decoding or scoring. None: Whisper reads every chunk. The
    transcriber recipe picks it on dev (`skip_fractions`, `max_wer_rise`)."""

    attend_margin_s: float | None = None
    """None: Whisper's decoder attends to its whole 30-s window, as it was trained. Otherwise to the
    chunk's own frames and this many seconds either side (the window's silence or neighbours), all
    chunks of a decoder call to one length. CTranslate2 computes each chunk's cross-attention keys
    and values over every frame it attends: over a whole window ~7x the work of decoding ~10 tokens."""

    decoder_lora: str | None = None
    """A LoRA of the Whisper decoder (the `whisper_tune` recipe's OUT/lora, in peft's files): added to
    the base's decoder weights at load, in a copy written once to the cache (spokenlm.whisper_tune).
    A relative path is under the bundle dir in a bundle (`spokenlm bundle set --transcriber` copies
    it in), else under the working directory. None: the base's own decoder."""

    max_tokens_per_second: float = 8.0
    """A reading longer than this many tokens per second of audio is a decoding loop, not speech
    (English speech is ~3-4 Whisper tokens/s): the CTC transcript is used instead."""

    def validate(self) -> None:
        if (self.base is None) == (self.path is None):
            raise ValueError("a transcriber needs exactly one of base and path")
        if self.base is not None:
            from spokenlm.bases import KNOWN_BASES

            if self.base not in KNOWN_BASES or not self.base.startswith("whisper"):
                whisper = [name for name in KNOWN_BASES if name.startswith("whisper")]
                raise ValueError(f"unknown transcriber base {self.base!r}; expected one of {', '.join(whisper)}")
        if not (_is_number(self.ctc_weight) and 0.0 <= self.ctc_weight <= 1.0):
            raise ValueError(f"ctc_weight must be a number in [0, 1], got {self.ctc_weight!r}")
        if not (_is_number(self.length_bonus) and abs(self.length_bonus) <= 100.0):
            raise ValueError(f"length_bonus must be a number in [-100, 100] (log-probability per word), got {self.length_bonus!r}")
        if not (_is_number(self.lm_weight) and 0.0 <= self.lm_weight <= 10.0):
            raise ValueError(f"lm_weight must be a number in [0, 10], got {self.lm_weight!r}")
        if not (isinstance(self.beam_size, int) and 1 <= self.beam_size <= 16):
            raise ValueError(f"beam_size must be an int in [1, 16], got {self.beam_size!r}")
        if not (isinstance(self.num_hypotheses, int) and not isinstance(self.num_hypotheses, bool)
                and 1 <= self.num_hypotheses <= self.beam_size):  # fmt: skip
            raise ValueError(f"num_hypotheses must be an int in [1, beam_size={self.beam_size}], got {self.num_hypotheses!r}")
        if not (isinstance(self.cpu_threads, int) and self.cpu_threads >= 0):
            raise ValueError(f"cpu_threads must be an int >= 0, got {self.cpu_threads!r}")
        if not (isinstance(self.batch_size, int) and 1 <= self.batch_size <= 256):
            raise ValueError(f"batch_size must be an int in [1, 256], got {self.batch_size!r}")
        if not (_is_number(self.pack_s) and (self.pack_s == 0 or 5.0 <= self.pack_s <= WINDOW_S)):
            raise ValueError(f"pack_s must be 0 (one chunk per window) or within [5, {WINDOW_S:.0f}] seconds, got {self.pack_s!r}")
        if not (_is_number(self.pack_gap_s) and 0.2 <= self.pack_gap_s <= 5.0):
            raise ValueError(f"pack_gap_s must be within [0.2, 5] seconds, got {self.pack_gap_s!r}")
        if not isinstance(self.bf16_encoder, bool):
            raise ValueError(f"bf16_encoder must be true or false, got {self.bf16_encoder!r}")
        if self.confident_ctc is not None and not (_is_number(self.confident_ctc) and -1000.0 <= self.confident_ctc <= 0.0):
            raise ValueError(f"confident_ctc must be null or a log-likelihood per second in [-1000, 0], got {self.confident_ctc!r}")
        if self.attend_margin_s is not None and not (_is_number(self.attend_margin_s) and 0.2 <= self.attend_margin_s <= WINDOW_S):
            raise ValueError(f"attend_margin_s must be null or within [0.2, {WINDOW_S:.0f}] seconds, got {self.attend_margin_s!r}")
        if self.decoder_lora is not None and not (isinstance(self.decoder_lora, str) and self.decoder_lora.strip()):
            raise ValueError(f"decoder_lora must be null or a path, got {self.decoder_lora!r}")
        if not (_is_number(self.max_tokens_per_second) and self.max_tokens_per_second > 0):
            raise ValueError(f"max_tokens_per_second must be > 0, got {self.max_tokens_per_second!r}")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def transcriber_config_to_json(config: TranscriberConfig) -> dict:
    return dataclasses.asdict(config)


def transcriber_config_from_json(data: dict, *, where: str = "transcriber") -> TranscriberConfig:
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected an object, got {type(data).__name__}")
    for name, why in _RETIRED.items():
        if name in data:
            raise ValueError(f"{where}: {name} is no longer a transcriber setting: {why}")
    names = {f.name for f in dataclasses.fields(TranscriberConfig)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(unknown)}")
    config = TranscriberConfig(**data)
    config.validate()
    return config


def read_transcriber_config(path: str | Path) -> TranscriberConfig:
    """A transcriber.json (a bundle's, or the transcriber recipe's OUT/transcriber.json)."""
    path = Path(path)
    if path.is_dir():
        path = path / TRANSCRIBER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {TRANSCRIBER_FILE} at {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    return transcriber_config_from_json(data, where=str(path))


@dataclass(frozen=True)
class Scores:
    """One reading of a chunk, scored by both models (log domain; -inf: impossible)."""

    ctc: float  # the CTC head's log-likelihood of the text over the chunk's frames
    decoder: float
    """The Whisper decoder's log-probability of the text's tokens given the chunk, each among the text
    tokens (the softmax over ids below <|endoftext|>, as Whisper's own aligner computes it); nan
    where the chunk's two readings are the same text (the rule takes it without a score)."""

    lm: float = 0.0
    """The CTC compressor's word LM's log-probability (natural log) of the text; 0 without an LM."""

    def joint(self, config: TranscriberConfig, words: int) -> float:
        # written out so a zero weight drops its term instead of making 0 * -inf = nan
        score = config.length_bonus * words
        if config.lm_weight > 0:
            score += config.lm_weight * self.lm
        if config.ctc_weight > 0:
            score += config.ctc_weight * self.ctc
        if config.ctc_weight < 1:
            score += (1 - config.ctc_weight) * self.decoder
        return score


@dataclass(frozen=True)
class Alternative:
    """One more of Whisper's readings of a chunk (`num_hypotheses`), scored as its best one is."""

    text: str
    scores: Scores
    rank: int  # its place in the beam's n best: 1 for the second best


@dataclass(frozen=True)
class ChunkReadings:
    """Both readings of one chunk (normalized as our transcripts are) and what the rule weighs."""

    whisper: str
    ctc: str
    whisper_scores: Scores
    ctc_scores: Scores
    whisper_tokens: int  # tokens Whisper generated (its raw text, before normalizing)
    whisper_logprob: float  # their mean log-probability, as faster-whisper's avg_logprob (reported only; packed: over all
    # the chunk's decoding generated, the text past its cut included)
    duration_s: float
    packed: bool = False  # Whisper read the chunk in a window shared with others (`pack_s`)
    confident: bool = False
    """Whisper did not read the chunk (`confident_ctc`): `whisper` is "", its scores and the decoder's
    score of the CTC reading nan."""
    others: tuple[Alternative, ...] = ()
    """Whisper's further readings (`num_hypotheses`), each text once, none equal to `whisper` or
    `ctc`, none empty or looping; in rank order."""

    def candidates(self, config: TranscriberConfig) -> list[tuple[str, Scores]]:
        """The readings the rule weighs under `config`, the CTC one first: Whisper's (the best and,
        with `num_hypotheses`, the others ranked below it) unless it read nothing, did not read the
        chunk or looped; none twice."""
        looping = self.whisper_tokens > config.max_tokens_per_second * max(self.duration_s, 1.0)
        if self.confident or not self.whisper or looping:
            return [(self.ctc, self.ctc_scores)]
        whisper = [(self.whisper, self.whisper_scores)] if self.whisper != self.ctc else []
        others = [(a.text, a.scores) for a in self.others if a.rank < config.num_hypotheses]
        return [(self.ctc, self.ctc_scores), *whisper, *others]

    def choose(self, config: TranscriberConfig) -> str:
        """The reading the prompt takes (module docstring): the highest joint score of `candidates`;
        the earlier on a tie (the CTC one first)."""
        best, best_score = self.ctc, -math.inf
        for i, (text, scores) in enumerate(self.candidates(config)):
            score = scores.joint(config, len(text.split()))
            if i == 0 or score > best_score:
                best, best_score = text, score
        return best


class WhisperTranscriber:
    """Whisper's reading of chunks, both readings scored (`score`); the config's rule chooses."""

    def __init__(self, config: TranscriberConfig, *, bundle: str | Path | None = None) -> None:
        config.validate()
        self.config = config
        if config.base is not None:
            from spokenlm.bases import KNOWN_BASES, resolve_base

            path = resolve_base(KNOWN_BASES[config.base], bundle=bundle)
        else:
            path = Path(config.path)
        encoder_path = path
        self.decoder_lora: Path | None = None  # the decoder LoRA's dir, resolved (`save_bundle` copies it)
        if config.decoder_lora is not None:
            from spokenlm.whisper_tune import tuned_whisper_dir

            lora = Path(config.decoder_lora)
            if bundle is not None and not lora.is_absolute():
                lora = Path(bundle) / lora
            self.decoder_lora = lora
            path = tuned_whisper_dir(path, lora)
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_suppressed_tokens

        from spokenlm.peers import FasterWhisper

        # FasterWhisper checks the directory (model.bin, tokenizer.json: faster-whisper would download one)
        peer = FasterWhisper(path, compute_type=config.compute_type, beam_size=config.beam_size,
                             cpu_threads=config.cpu_threads)  # fmt: skip
        self._features = peer.model.feature_extractor
        self._bf16_encoder = None  # the same encoder weights in torch (`bf16_encoder`)
        if config.bf16_encoder:
            from spokenlm.encoders.whisper import load_whisper_encoder

            self._bf16_encoder = load_whisper_encoder(encoder_path).model.eval()
        self._model = peer.model.model  # the ctranslate2.models.Whisper
        self._tokenizer = Tokenizer(peer.model.hf_tokenizer, peer.model.model.is_multilingual, task="transcribe",
                                    language=peer.language)  # fmt: skip
        self._prompt = [*self._tokenizer.sot_sequence, self._tokenizer.no_timestamps]
        self._stamped = list(self._tokenizer.sot_sequence)  # packed windows: segments with timestamps
        self._suppress = get_suppressed_tokens(self._tokenizer, [-1])
        self._lm: SentenceLM | None = None  # the last word LM `score` was given, loaded

    def score(self, audio: Sequence[Tensor], ctc_texts: Sequence[str], ctc_log_probs: Sequence[Tensor],
              vocab: CharVocab, lm_path: str | Path | None = None) -> list[ChunkReadings]:  # fmt: skip
        """Chunks (S,) of mono 16 kHz audio, each at most 30 s, with the CTC head's transcript and
        log-probabilities (T, V) of each -> both readings of each chunk, scored by both models, and
        by the word LM at `lm_path` (the CTC compressor's ARPA file) when there is one."""
        if not len(audio) == len(ctc_texts) == len(ctc_log_probs):
            raise ValueError(f"got {len(audio)} chunks, {len(ctc_texts)} CTC transcripts, {len(ctc_log_probs)} CTC log-prob rows")
        for wav in audio:
            if wav.shape[-1] > WINDOW_S * SAMPLE_RATE:
                raise ValueError(f"a transcriber reads {WINDOW_S:.0f}-s windows; got a {wav.shape[-1] / SAMPLE_RATE:.1f}-s "
                                 "chunk (the bundle's max_chunk_s must be at most 30)")  # fmt: skip
        if lm_path is None and self.config.lm_weight > 0:
            raise ValueError(f"lm_weight is {self.config.lm_weight}, but the CTC compressor has no word LM to score "
                             "readings with (a compressor from the ctc-lm recipe has one)")  # fmt: skip
        lm = self._load_lm(lm_path)

        def lm_score(text: str) -> float:
            return 0.0 if lm is None else lm.log10_prob(text) * math.log(10.0)

        waves = [wav.detach().float().cpu().numpy().reshape(-1) for wav in audio]
        ctc_scores = [Scores(ctc=ctc_log_likelihood(log_probs, text, vocab), decoder=math.nan, lm=lm_score(text))
                      for text, log_probs in zip(ctc_texts, ctc_log_probs)]  # fmt: skip
        gate = self.config.confident_ctc
        confident = [gate is not None and ctc_confidence(scores, len(wav) / SAMPLE_RATE, self.config) >= gate
                     for scores, wav in zip(ctc_scores, waves)]  # fmt: skip
        step = self.config.batch_size
        windows = self._windows(waves, ctc_texts, [i for i, sure in enumerate(confident) if not sure])
        reads: dict[int, _Read | None] = {}
        for first in range(0, len(windows), step):
            reads |= self._read_windows(windows[first : first + step], waves, ctc_texts)
        # a chunk whose share of a packed window's reading is unclear is read again in a window of its own
        alone = [_Window((i,), (0.0,)) for i, read in sorted(reads.items()) if read is None]
        for first in range(0, len(alone), step):
            reads |= self._read_windows(alone[first : first + step], waves, ctc_texts)

        out = []
        for i, (wav, text, log_probs) in enumerate(zip(waves, ctc_texts, ctc_log_probs)):
            if confident[i]:
                out.append(ChunkReadings(whisper="", ctc=text, whisper_scores=Scores(math.nan, math.nan, math.nan),
                                         ctc_scores=ctc_scores[i], whisper_tokens=0, whisper_logprob=math.nan,
                                         duration_s=len(wav) / SAMPLE_RATE, confident=True))  # fmt: skip
                continue
            read = reads[i]

            def scored(reading: str) -> Scores:  # the decoder's score: nan where no two readings differ
                base = (ctc_scores[i] if reading == text else  # the CTC reading is scored already
                        Scores(ctc=ctc_log_likelihood(log_probs, reading, vocab), decoder=math.nan, lm=lm_score(reading)))  # fmt: skip
                return dataclasses.replace(base, decoder=read.decoder.get(reading, math.nan))

            out.append(ChunkReadings(
                whisper=read.text, ctc=text, whisper_tokens=read.tokens, whisper_logprob=read.logprob,
                duration_s=len(wav) / SAMPLE_RATE, packed=read.packed, whisper_scores=scored(read.text),
                ctc_scores=scored(text), others=tuple(Alternative(other, scored(other), rank) for rank, other in read.others),
            ))  # fmt: skip
        return out

    def decoder_examples(self, audio: Sequence[Tensor], texts: Sequence[str]) -> list[DecoderExample]:
        """What Whisper's decoder is given and should answer for chunks (mono 16 kHz, each at most
        30 s) whose transcripts are `texts` (Whisper's style: cased, punctuated), read exactly as
        `score` reads them: the same windows (`pack_s`), encoder and attended frames
        (`attend_margin_s`), one example per chunk. The target is the chunk's text tokens and then
        what ends its reading: `<|endoftext|>` alone in its window, or in a packed window the
        timestamp of its end and the next segment's (the next chunk's start; `<|endoftext|>` after the
        last). The `whisper_tune` recipe fine-tunes the decoder on these."""
        waves = [wav.detach().float().cpu().numpy().reshape(-1) for wav in audio]
        if len(waves) != len(texts):
            raise ValueError(f"got {len(waves)} chunks and {len(texts)} texts")
        for wav in waves:
            if len(wav) > WINDOW_S * SAMPLE_RATE:
                raise ValueError(f"a transcriber reads {WINDOW_S:.0f}-s windows; got a {len(wav) / SAMPLE_RATE:.1f}-s chunk")
        eot = self._tokenizer.eot
        # a chunk with no text goes alone, as `pack_windows` sends a chunk the CTC head read as empty
        out: list[DecoderExample] = []
        for window in self._windows(waves, [t.strip() for t in texts], list(range(len(waves)))):
            jobs, attended, _ = self._window_jobs([window], waves)  # one window at a time: its jobs share a width
            packed = len(window.chunks) > 1
            for j, (_, chunk, offset) in enumerate(jobs):
                text = texts[chunk].strip()
                tokens = self._tokenizer.encode(" " + text) if text else []
                if packed:
                    end = self._timestamp(min(offset + len(waves[chunk]) / SAMPLE_RATE, WINDOW_S))
                    after = self._timestamp(jobs[j + 1][2]) if j + 1 < len(jobs) else eot
                    prompt, target = [*self._stamped, self._timestamp(offset)], [*tokens, end, after]
                else:
                    prompt, target = list(self._prompt), [*tokens, eot]
                out.append(DecoderExample(frames=attended[j].astype(np.float16), prompt=prompt, target=target))
        return out

    def _load_lm(self, path: str | Path | None) -> SentenceLM | None:
        if path is None:
            return None
        if self._lm is None or self._lm.path != Path(path):
            from spokenlm.compress.beam import SentenceLM

            self._lm = SentenceLM(path)
        return self._lm

    def _windows(self, waves: list[np.ndarray], ctc_texts: Sequence[str], chunks: list[int]) -> list[_Window]:
        """The windows Whisper reads `chunks` (indices into `waves`) in."""
        if not self.config.pack_s:
            return [_Window((i,), (0.0,)) for i in chunks]
        windows = pack_windows([len(waves[i]) / SAMPLE_RATE for i in chunks], [ctc_texts[i] for i in chunks],
                               self.config.pack_s, self.config.pack_gap_s)  # fmt: skip
        return [_Window(tuple(chunks[c] for c in w.chunks), w.offsets) for w in windows]

    def _read_windows(self, windows: list[_Window], waves: list[np.ndarray], ctc_texts: Sequence[str]) -> dict[int, _Read | None]:
        """Whisper's reading of each window's chunks (its beam's `num_hypotheses` best) and the decoder
        scores of every reading, the CTC one's included; None for a chunk of a packed window whose
        best reading ran into the next chunk's (`cut_packed_reading`)."""
        import ctranslate2

        out: dict[int, _Read | None] = {}
        for packed in (False, True):  # two calls: the prompts (with timestamps or without) differ in length
            group = [w for w in windows if (len(w.chunks) > 1) == packed]
            if not group:
                continue
            jobs, attended, frames = self._window_jobs(group, waves)
            prompts = [[*self._stamped, self._timestamp(offset)] if packed else self._prompt for _, _, offset in jobs]
            longest = max(len(waves[chunk]) for _, chunk, _ in jobs) / SAMPLE_RATE
            # a reading longer than max_tokens_per_second is a loop (`choose` drops it): decoding stops there
            limit = min(MAX_LENGTH, len(prompts[0]) + math.ceil(self.config.max_tokens_per_second * max(longest, 1.0)) + 2)
            results = self._model.generate(
                ctranslate2.StorageView.from_array(attended), prompts,
                beam_size=self.config.beam_size, num_hypotheses=self.config.num_hypotheses, max_length=limit,
                return_scores=True, return_no_speech_prob=True,
                suppress_blank=True, suppress_tokens=self._suppress,
            )  # fmt: skip
            read: list[tuple[int, int, float]] = []  # (job, chunk, offset) of every chunk read
            silent: dict[int, float] = {}
            for job, ((_, chunk, offset), result) in enumerate(zip(jobs, results)):
                end_s = offset + len(waves[chunk]) / SAMPLE_RATE
                hypotheses = []  # (rank, token ids) of each reading that is whole
                for rank, ids in enumerate(result.sequences_ids):
                    if packed:
                        ids = cut_packed_reading(ids, end_s, self._tokenizer.timestamp_begin, gap_s=self.config.pack_gap_s,
                                                 ended=len(prompts[0]) + len(ids) < limit)  # fmt: skip
                    if ids is not None:
                        hypotheses.append((rank, ids))
                silent[chunk] = math.log(max(result.no_speech_prob, 1e-30))
                if not hypotheses or hypotheses[0][0] != 0:  # the best reading ran on: read the chunk alone
                    out[chunk] = None
                    continue
                ids = hypotheses[0][1]
                # faster-whisper's avg_logprob: CTranslate2's length-normalized score, over the tokens and the end
                logprob = result.scores[0] * len(result.sequences_ids[0]) / (len(result.sequences_ids[0]) + 1)
                text = self._text(ids)
                seen, others = {text, ctc_texts[chunk], ""}, []
                most = self.config.max_tokens_per_second * max(len(waves[chunk]) / SAMPLE_RATE, 1.0)
                for rank, other in hypotheses[1:]:
                    reading = self._text(other)
                    if reading not in seen and len(other) <= most:  # a loop is never the rule's to take
                        seen.add(reading)
                        others.append((rank, reading))
                out[chunk] = _Read(text=text, tokens=len(ids), logprob=logprob, packed=packed, others=tuple(others))
                read.append((job, chunk, offset))
            # where every reading is the CTC one's, the rule takes that text without a score: only the others are scored
            differ = {chunk: (job, offset, texts) for job, chunk, offset in read
                      if len(set(texts := (out[chunk].text, ctc_texts[chunk], *(t for _, t in out[chunk].others)))) > 1}  # fmt: skip
            scores = self._decoder_scores(attended, frames, packed, differ)
            for _, chunk, _ in read:
                texts = differ[chunk][2] if chunk in differ else ()
                out[chunk] = dataclasses.replace(out[chunk], decoder={t: scores[(chunk, t)] if t else silent[chunk] for t in texts})
        return out

    def _window_jobs(self, group: list[_Window], waves: list[np.ndarray]) -> tuple[list[tuple[int, int, float]], np.ndarray, list[int]]:
        """The windows encoded: one decoding job (window row, chunk, offset) per chunk (in a packed
        window from its start's timestamp on), the encoder frames each job's decoder attends, and how
        many mel frames of audio they hold (`_attended`)."""
        from faster_whisper.audio import pad_or_trim

        audio = [self._window_audio(w, waves) for w in group]
        mels = [pad_or_trim(self._features(a)) for a in audio]
        # One window per encoder call, the decoder over the whole batch: a batched encoder call holds
        # every window's 1500 x 1500 attention maps at once (bench pipeline's peak RSS rose 1.9 -> 2.7 GB
        # with 8-window calls) and was no faster here (19.2 vs 19.8 s for 94 s of audio, 1 thread).
        encoded = np.concatenate([self._encode(m) for m in mels])
        frames = [min(mel.shape[-1], len(a) // self._features.hop_length) for mel, a in zip(mels, audio)]
        jobs = [(row, chunk, offset) for row, w in enumerate(group) for chunk, offset in zip(w.chunks, w.offsets)]
        attended, frames = self._attended(encoded, frames, jobs, waves)
        return jobs, attended, frames

    def _attended(self, encoded: np.ndarray, frames: list[int], jobs: list[tuple[int, int, float]],
                  waves: list[np.ndarray]) -> tuple[np.ndarray, list[int]]:  # fmt: skip
        """(jobs, frames, width) the encoder frames each job's decoder attends, and how many mel frames
        of audio they hold (for `align`): its window's; or with `attend_margin_s` the chunk's own
        frames with the margin either side, one length for all (the longest need; a shorter one takes
        more of its window), and the window's last `TAIL_S` (see there). Positions stay the window's:
        the encoder added them."""
        rows = [row for row, _, _ in jobs]
        if self.config.attend_margin_s is None:
            return encoded[rows], [frames[row] for row in rows]
        total = encoded.shape[1]
        margin, tail = round(self.config.attend_margin_s / TIME_STEP_S), round(TAIL_S / TIME_STEP_S)
        spans = []
        for _, chunk, offset in jobs:
            start = round(offset / TIME_STEP_S)
            end = start + math.ceil(len(waves[chunk]) / SAMPLE_RATE / TIME_STEP_S)
            spans.append((max(0, start - margin), min(total, end + margin)))
        length = max(end - start for start, end in spans)
        if length + tail >= total:
            return encoded[rows], [frames[row] for row in rows]
        attended = []
        for row, (start, _) in zip(rows, spans):
            if start + length >= total - tail:  # the span meets the tail: one run of length + tail frames
                attended.append(encoded[row, total - length - tail :])
            else:
                attended.append(np.concatenate([encoded[row, start : start + length], encoded[row, total - tail :]]))
        return np.stack(attended), [2 * (length + tail)] * len(jobs)  # two mel frames per encoder frame

    def _encode(self, mel: np.ndarray) -> np.ndarray:
        """(mels, 3000) log-mel of one window -> (1, 1500, width) Whisper encoder output."""
        import ctranslate2

        mel = mel[None].astype(np.float32)
        if self._bf16_encoder is None:
            return np.asarray(self._model.encode(ctranslate2.StorageView.from_array(mel)))
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            return self._bf16_encoder(input_features=torch.from_numpy(mel)).last_hidden_state.float().numpy()

    def _timestamp(self, seconds: float) -> int:
        return self._tokenizer.timestamp_begin + round(seconds / TIME_STEP_S)

    def _window_audio(self, window: _Window, waves: list[np.ndarray]) -> np.ndarray:
        if len(window.chunks) == 1:
            return waves[window.chunks[0]]
        starts = [round(offset * SAMPLE_RATE) for offset in window.offsets]
        audio = np.zeros(starts[-1] + len(waves[window.chunks[-1]]), dtype=np.float32)
        for chunk, start in zip(window.chunks, starts):
            audio[start : start + len(waves[chunk])] = waves[chunk]
        return audio

    def _text(self, tokens: list[int]) -> str:
        return reading_text(self._tokenizer, tokens)

    def _decoder_scores(self, attended: np.ndarray, frames: list[int], packed: bool,
                        chunks: dict[int, tuple[int, float, tuple[str, ...]]]) -> dict[tuple[int, str], float]:  # fmt: skip
        """The Whisper decoder's log-probability of each chunk's texts' tokens (forced decoding) given
        the encoder frames it read the chunk from (`chunks`: chunk -> its job's row of `attended`, its
        offset in its window, its readings), each non-empty text in one `align` call. In a packed window the text follows the
        timestamp of the chunk's start (a token that is not text: its own probability is left out).
        A text longer than the decoder's context (a loop, or digits spelt out) scores -inf."""
        import ctranslate2

        rows, texts, keys = [], [], []
        prompt = self._stamped if packed else self._prompt
        out: dict[tuple[int, str], float] = {}
        for chunk, (row, offset, readings) in chunks.items():
            for text in dict.fromkeys(readings):
                if text:
                    tokens = self._tokenizer.encode(" " + text)
                    tokens = [self._timestamp(offset), *tokens] if packed else tokens
                    if len(prompt) + len(tokens) + 2 > MAX_LENGTH:  # CTranslate2's align takes two positions past the text
                        out[(chunk, text)] = -math.inf
                        continue
                    texts.append(tokens)
                    rows.append(row)
                    keys.append((chunk, text))
        if not rows:
            return out
        aligned = self._model.align(ctranslate2.StorageView.from_array(attended[rows]), prompt, texts, [frames[r] for r in rows])
        skip = 1 if packed else 0
        return out | {key: float(sum(math.log(max(p, 1e-30)) for p in result.text_token_probs[skip:]))
                      for key, result in zip(keys, aligned)}  # fmt: skip


def reading_text(tokenizer, tokens: Sequence[int]) -> str:
    """A Whisper reading's tokens as our transcripts are written: decoded (faster-whisper's
    tokenizer drops the special and timestamp tokens), digits spoken, normalized."""
    from spokenlm.data.text import normalize, speakable

    raw = tokenizer.decode(list(tokens)).strip()
    return normalize(speakable(raw) or raw)


@dataclass(frozen=True)
class DecoderExample:
    """One chunk as Whisper's decoder reads it (`WhisperTranscriber.decoder_examples`)."""

    frames: np.ndarray  # (frames, width) float16: the encoder output the decoder attends
    prompt: list[int]  # the decoder's prompt (start of transcript; a packed chunk's start timestamp)
    target: list[int]  # the tokens it should write after the prompt, its end included


@dataclass(frozen=True)
class _Read:
    """Whisper's reading of one chunk, and the decoder's score of each reading (its best, the CTC
    one, the others); none where they are all one text."""

    text: str
    tokens: int
    logprob: float
    packed: bool
    others: tuple[tuple[int, str], ...] = ()  # (rank, text) of the further readings (`num_hypotheses`)
    decoder: dict[str, float] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class _Window:
    """Chunks Whisper reads in one window, with where each starts in it (seconds)."""

    chunks: tuple[int, ...]
    offsets: tuple[float, ...]


def pack_windows(durations: Sequence[float], ctc_texts: Sequence[str], pack_s: float, gap_s: float) -> list[_Window]:
    """Chunks (their durations, in order) packed into windows of at most `pack_s` seconds, each chunk
    followed by `gap_s` of silence (the last one's gap may fall outside) and starting on Whisper's
    20-ms timestamp grid. A chunk the CTC head read as empty goes alone: in a packed window an empty
    reading has no score of its own (alone, it is the window's no-speech probability)."""
    windows: list[_Window] = []
    chunks: list[int] = []
    offsets: list[float] = []
    steps = 0  # where the next chunk would start, in 20-ms timestamp steps
    for i, seconds in enumerate(durations):
        if not ctc_texts[i] or seconds > pack_s:
            windows.append(_Window((i,), (0.0,)))
            continue
        if chunks and steps * TIME_STEP_S + seconds > pack_s:
            windows.append(_Window(tuple(chunks), tuple(offsets)))
            chunks, offsets, steps = [], [], 0
        chunks.append(i)
        offsets.append(round(steps * TIME_STEP_S, 2))
        steps += math.ceil(round((seconds + gap_s) / TIME_STEP_S, 6))  # the round: 5.0 / 0.02 is 250.00000000000003
    if chunks:
        windows.append(_Window(tuple(chunks), tuple(offsets)))
    return windows


def cut_packed_reading(ids: Sequence[int], end_s: float, timestamp_begin: int, *, gap_s: float, ended: bool) -> list[int] | None:
    """The text tokens of a packed chunk's reading (`ids`: Whisper's tokens after the timestamp of the
    chunk's start), up to where the next chunk begins: a segment that opens at or after the chunk's
    end (`end_s`). None (read it again alone) when a segment runs well into the next chunk (Whisper
    wrote two chunks' words as one segment: "4, 9, 2") or the reading never closed (not `ended`: it
    hit the length limit, a loop). Token ids >= `timestamp_begin` are timestamps, 20 ms apart."""
    ids = list(ids)
    if ids and ids[0] >= timestamp_begin:  # CTranslate2 returns the prompt's last token, the start, as a prefix
        ids = ids[1:]
    text: list[int] = []
    inside = True  # the prompt opened the first segment
    for token in ids:
        if token < timestamp_begin:
            if inside:
                text.append(token)
            continue
        seconds = (token - timestamp_begin) * TIME_STEP_S
        if inside:  # the segment closes
            if seconds > end_s + gap_s + SEGMENT_SLACK_S:
                return None
            inside = False
        elif seconds >= end_s - SEGMENT_SLACK_S:  # the next segment is the next chunk's
            return text
        else:
            inside = True
    return text if ended or not inside else None


def ctc_log_likelihood(log_probs: Tensor, text: str, vocab: CharVocab) -> float:
    """log P(text | frames) under a CTC head: the sum over all its alignments (minus the CTC loss)
    of (T, V) log-probabilities; -inf when no alignment fits in T frames. An empty text: the
    all-blank path."""
    targets = vocab.encode(text)
    loss = torch.nn.functional.ctc_loss(
        log_probs.detach().float().cpu()[:, None], torch.tensor([targets], dtype=torch.long).reshape(1, -1),
        torch.tensor([log_probs.shape[0]]), torch.tensor([len(targets)]), blank=0, reduction="sum",
    )  # fmt: skip
    return -float(loss)


def ctc_confidence(scores: Scores, duration_s: float, config: TranscriberConfig) -> float:
    """How sure the CTC head (with the word LM at the rule's `lm_weight`) is of its own transcript:
    (CTC log-likelihood + lm_weight * word-LM log-probability) per second of audio, the duration
    floored at 0.5 s. `confident_ctc` gates Whisper on it. Per second, not per character: a
    transcript that leaves speech out scores no better for being short. On the stop-26 dev readings,
    skipping the surest 40 % of chunks cost 0.0016 WER by this measure, 0.0037 without the LM term,
    0.0058 per character."""
    lm = config.lm_weight * scores.lm if config.lm_weight > 0 else 0.0
    return (scores.ctc + lm) / max(duration_s, 0.5)


def choose_prompt_texts(readings: Sequence[Sequence[ChunkReadings]], config: TranscriberConfig) -> list[str]:
    """Per recording, its chunks' chosen readings joined in order: the prompt's transcript."""
    return [" ".join(t for chunk in chunks if (t := chunk.choose(config))) for chunks in readings]


def load_transcriber(config: TranscriberConfig | None, *, bundle: str | Path | None = None) -> WhisperTranscriber | None:
    return None if config is None else WhisperTranscriber(config, bundle=bundle)
