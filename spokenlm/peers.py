"""Peer recognizers that ship their own models, to compare our bundles against on the same clips.

- ``Pocketsphinx``: pocketsphinx (CMU Sphinx 5), a real English recognizer with its US-English acoustic
  model, a dictionary and a general-domain 3-gram LM inside the wheel, so it runs here with nothing to
  download. The same model also force-aligns a known transcript (``PocketsphinxAligner``): an HMM
  aligner, the kind (like the Montreal Forced Aligner) that word boundaries are usually measured against.
- ``WhisperPeer``: Whisper (Radford et al., 2022) whole, encoder and decoder, through transformers'
  ``generate`` (greedy or beam search), from a Hugging Face Whisper dir or a CTranslate2 one (read by
  ``spokenlm.encoders.whisper.load_whisper_model``, without ctranslate2). Default: tiny.en, the base
  our default bundle's encoder is (``spokenlm.bases.WHISPER_TINY_EN``).
- ``FasterWhisper``: faster-whisper (CTranslate2, int8 on CPU, beam 5), the recognizer a user would
  pick instead of ours; it runs the same CTranslate2 dir as it is.
- ``english_normal_form``: Whisper's English text normalizer (the paper's Appendix C), to score
  recognizers that write "Mr." or "25" against references that say "mister" and "twenty five".

Every ``transcribe`` takes a mono 16 kHz float waveform (S,) and returns its transcript normalized as
our references are (``spokenlm.data.text.normalize``: lower case, no punctuation).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch

from spokenlm.audio import SAMPLE_RATE
from spokenlm.data.text import normalize

WHISPER_WINDOW_S = 30  # Whisper hears 30-s windows (3,000 mel frames), padded with silence
MULTILINGUAL_VOCAB = 51_865  # Whisper's multilingual vocabularies have at least this many tokens; .en ones 51,864


def english_normal_form(text: str) -> str:
    """``text`` in one written form for scoring: our ``normalize``, then Whisper's English text
    normalizer (transformers' ``EnglishTextNormalizer``: spelled-out numbers to digits, "mr" to
    "mister", "don't" to "do not", fillers such as "uh" / "hmm" dropped, ...), then ``normalize`` again
    (it leaves "$", "%" and decimal points). Its British-to-American spelling map is not shipped with
    the models we have, so spellings are left as they are. Apply it to references and to every
    recognizer's output alike."""
    return normalize(_english_normalizer()(normalize(text)))


@cache
def _english_normalizer():
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    return EnglishTextNormalizer({})  # {}: no spelling map (openai's english.json is not in the bases)


def _default_whisper_dir() -> Path:
    from spokenlm.bases import WHISPER_TINY_EN, resolve_base

    return resolve_base(WHISPER_TINY_EN)  # BaseError saying what to run when it is not fetched


def _check_wav(wav: torch.Tensor) -> None:
    if not isinstance(wav, torch.Tensor) or wav.dim() != 1:
        raise ValueError(f"expected a mono waveform (S,), got shape {tuple(getattr(wav, 'shape', ()))}")
    if not wav.is_floating_point():
        raise ValueError(f"expected float samples in [-1, 1], got {wav.dtype}")
    if wav.numel() == 0:
        raise ValueError("expected a mono waveform (S,), got no samples")


class Pocketsphinx:
    """pocketsphinx's default US-English recognizer; one utterance per call."""

    def __init__(self) -> None:
        try:
            from pocketsphinx import Decoder
        except ImportError as e:  # pragma: no cover - pinned in requirements.txt
            raise ImportError("pocketsphinx is not installed: pip install -r requirements.txt") from e
        self._decoder = Decoder(samprate=SAMPLE_RATE, loglevel="FATAL")

    def transcribe(self, wav: torch.Tensor) -> str:
        """A mono 16 kHz float waveform (S,) -> its transcript, normalized as our references are."""
        _decode(self._decoder, wav)
        hyp = self._decoder.hyp()
        return normalize(hyp.hypstr) if hyp is not None else ""


@dataclass(frozen=True)
class WordTime:
    word: str
    start_s: float
    end_s: float


class PocketsphinxAligner:
    """Word-level forced alignment of a known transcript with pocketsphinx's US-English HMM acoustic
    model and pronunciation dictionary (Viterbi over the words' phone HMMs, optional silences between).

    Frames are 10 ms; frame t's analysis window is [10 t, 10 t + 25.6) ms, so with the convention
    "frame t covers [t / r + c, (t + 1) / r + c)" (window centred) c = FRAME_SHIFT_S. Words come back
    with [start_s, end_s) in those seconds; silences and fillers are left out.
    """

    FRAME_RATE_HZ = 100.0
    FRAME_SHIFT_S = 0.0128 - 0.005  # the window centre of frame 0 minus the nominal 0.5 / rate

    def __init__(self) -> None:
        from pocketsphinx import Decoder

        self._decoder = Decoder(samprate=SAMPLE_RATE, loglevel="FATAL")

    def missing_words(self, text: str) -> list[str]:
        """The words of ``text`` that the dictionary has no pronunciation for (they cannot align)."""
        return [w for w in dict.fromkeys(text.split()) if self._decoder.lookup_word(w) is None]

    def align(self, wav: torch.Tensor, text: str) -> list[WordTime]:
        """The words of ``text`` (normalized: lower case, space separated) timed on ``wav`` (mono 16 kHz).
        ValueError naming the problem: no words, words without a pronunciation, or no alignment found
        (the text is not what was said, or the audio is too short for it)."""
        words = text.split()
        if not words:
            raise ValueError("nothing to align: the transcript has no words")
        missing = self.missing_words(text)
        if missing:
            raise ValueError(f"no pronunciation in pocketsphinx's dictionary for: {', '.join(missing)}")
        self._decoder.set_align_text(" ".join(words))
        _decode(self._decoder, wav)
        timed = [
            WordTime(_VARIANT.sub("", seg.word), seg.start_frame / self.FRAME_RATE_HZ + self.FRAME_SHIFT_S,
                     (seg.end_frame + 1) / self.FRAME_RATE_HZ + self.FRAME_SHIFT_S)
            for seg in self._decoder.seg() or ()  # None when the search found no path
            if not _FILLER.fullmatch(seg.word)
        ]  # fmt: skip
        if [w.word for w in timed] != words:
            raise ValueError(f"pocketsphinx found no alignment of {len(words)} words in {wav.shape[-1] / SAMPLE_RATE:.2f} s")
        return timed


_VARIANT = re.compile(r"\(\d+\)$")  # "the(2)": the second pronunciation of "the"
_FILLER = re.compile(r"<.*>|\[.*\]|\(NULL\)")  # <sil>, <s>, </s>, [NOISE], (NULL)


def _decode(decoder, wav: torch.Tensor) -> None:
    _check_wav(wav)
    pcm = (wav.clamp(-1, 1) * 32767).round().to(torch.int16).numpy().tobytes()
    decoder.start_utt()
    decoder.process_raw(pcm, full_utt=True)
    decoder.end_utt()


@dataclass(frozen=True)
class WhisperDecoding:
    """One clip as Whisper decoded it."""

    token_ids: list[int]  # what the decoder wrote after its prompt, up to (not including) <|endoftext|>
    text: str  # those tokens as text, as Whisper writes it: cased and punctuated ("Mr. Dashwood, ...")


class WhisperPeer:
    """Whisper's encoder and decoder through transformers' ``generate``: greedy (``num_beams=1``) or
    beam search, ``batch_size`` clips at a time.

    ``path``: a Hugging Face Whisper dir or a CTranslate2 one (int8 / float16 / float32); default the
    tiny.en base (``spokenlm bases fetch``). Each clip is padded with silence to Whisper's 30-s window
    (``WhisperFeatureExtractor``), as the model was trained, so clip length does not change the cost;
    clips longer than 30 s are refused rather than decoded with transformers' long-form (timestamp)
    path: cut them first (``spokenlm.audio`` splits at pauses into chunks of at most 30 s).

    The decoder prompt is ``<|startoftranscript|> <|notimestamps|>`` for English-only models
    (vocabulary under 51,865 tokens, as openai/whisper tells them apart) and ``<|startoftranscript|>
    <|lang|> <|transcribe|> <|notimestamps|>`` for multilingual ones (``language=None``: detected).
    ``max_new_tokens`` defaults to half the decoder's positions (224 for every released Whisper), as
    openai/whisper's ``sample_len``.
    """

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        num_beams: int = 1,
        batch_size: int = 8,
        max_new_tokens: int | None = None,
        language: str | None = "en",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        from transformers import WhisperFeatureExtractor

        from spokenlm.encoders.whisper import load_whisper_model

        if not isinstance(num_beams, int) or num_beams < 1:
            raise ValueError(f"num_beams must be a positive int, got {num_beams!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.path = Path(path) if path is not None else _default_whisper_dir()
        self.model, self.tokenizer = load_whisper_model(self.path, dtype=dtype)
        config = self.model.config
        limit = config.max_target_positions - 4  # room for the longest prompt
        max_new_tokens = config.max_target_positions // 2 if max_new_tokens is None else max_new_tokens
        if not isinstance(max_new_tokens, int) or not 1 <= max_new_tokens <= limit:
            raise ValueError(f"max_new_tokens must be an int in [1, {limit}] for {self.path}, got {max_new_tokens!r}")
        self.english_only = config.vocab_size < MULTILINGUAL_VOCAB
        if self.english_only and language not in ("en", None):
            raise ValueError(f"{self.path} is an English-only Whisper: language must be 'en', got {language!r}")
        self.num_beams, self.batch_size, self.dtype = num_beams, batch_size, dtype
        self.features = WhisperFeatureExtractor(feature_size=config.num_mel_bins)
        gen = self.model.generation_config
        self.eot = gen.eos_token_id
        self._suppress = _SuppressTokens(config.vocab_size, gen.suppress_tokens or (), gen.begin_suppress_tokens or ())
        # The suppress lists move into _SuppressTokens, on the model's config too: otherwise the generic
        # generate() copies the model's lists back into the config Whisper's generate() cleared and
        # builds the same processors a second time, with a warning per call.
        gen.suppress_tokens = gen.begin_suppress_tokens = None
        self._generation = self._generation_config(language, max_new_tokens)

    def _generation_config(self, language: str | None, max_new_tokens: int):
        gen = copy.deepcopy(self.model.generation_config)
        gen.num_beams, gen.do_sample, gen.max_new_tokens = self.num_beams, False, max_new_tokens
        gen.max_length = None  # max_new_tokens decides
        if self.english_only:
            # No language token in the prompt: generate() detects a language whenever lang_to_id exists.
            # load_whisper_model gives a CTranslate2 English-only model none, but an HF dir's
            # generation_config.json may carry one (its prompt then became <|startoftranscript|> <|sq|> ...).
            gen.is_multilingual = False
            for key in ("lang_to_id", "task_to_id", "language", "task"):
                gen.__dict__.pop(key, None)
        else:
            gen.is_multilingual, gen.language, gen.task = True, language, "transcribe"
        return gen

    def transcribe(self, wav: torch.Tensor) -> str:
        """A mono 16 kHz float waveform (S,), at most 30 s -> its transcript, normalized as our references."""
        return self.transcribe_batch([wav])[0]

    def transcribe_batch(self, wavs: Sequence[torch.Tensor]) -> list[str]:
        """Waveforms (S_i,) -> normalized transcripts, in order."""
        return [normalize(d.text) for d in self.decode(wavs)]

    def decode(self, wavs: Sequence[torch.Tensor]) -> list[WhisperDecoding]:
        """Waveforms (S_i,) -> what Whisper wrote for each, in order, ``batch_size`` at a time."""
        from transformers import LogitsProcessorList

        for wav in wavs:
            _check_wav(wav)
            if wav.shape[0] > WHISPER_WINDOW_S * SAMPLE_RATE:
                raise ValueError(
                    f"audio of {wav.shape[0] / SAMPLE_RATE:.2f} s is longer than Whisper's {WHISPER_WINDOW_S} s "
                    "window; cut it first (spokenlm.audio splits at pauses into chunks of at most 30 s)"
                )
        out: list[WhisperDecoding] = []
        for start in range(0, len(wavs), self.batch_size):
            batch = [w.detach().float().cpu().numpy() for w in wavs[start : start + self.batch_size]]
            # (B, num_mel_bins, 3000) log-mel of each clip padded to 30 s; the mask marks its real samples
            feats = self.features(batch, sampling_rate=SAMPLE_RATE, return_tensors="pt", return_attention_mask=True)
            with torch.inference_mode():
                ids = self.model.generate(
                    feats.input_features.to(self.dtype),
                    attention_mask=feats.attention_mask,
                    generation_config=self._generation,
                    logits_processor=LogitsProcessorList([self._suppress]),
                )  # (B, T): the tokens after the prompt, <|endoftext|>-padded
            out += [self._decoding(row.tolist()) for row in ids]
        return out

    def _decoding(self, ids: list[int]) -> WhisperDecoding:
        ids = ids[: ids.index(self.eot)] if self.eot in ids else ids
        text = self.tokenizer.decode([i for i in ids if i < self.eot])  # ids past <|endoftext|>: special
        return WhisperDecoding(token_ids=ids, text=text.strip())


class _SuppressTokens:
    """transformers' ``SuppressTokensLogitsProcessor`` and ``SuppressTokensAtBeginLogitsProcessor`` in
    one, with their masks made once: theirs run ``torch.isin`` over the whole vocabulary at every step,
    ~3 ms a call on one thread and 0.2 s on two threads of a busy 2-core box. Ids past the vocabulary
    (transformers' WhisperConfig defaults on a tiny test vocabulary) are ignored, as there."""

    def __init__(self, vocab_size: int, always: Sequence[int], at_begin: Sequence[int]) -> None:
        self.always = torch.zeros(vocab_size, dtype=torch.bool)  # (V,)
        self.always[[i for i in always if 0 <= i < vocab_size]] = True
        self.at_begin = self.always.clone()  # (V,): at the first generated position, these as well
        self.at_begin[[i for i in at_begin if 0 <= i < vocab_size]] = True
        self.begin_index: int | None = None

    def set_begin_index(self, begin_index: int) -> None:
        """Whisper's generate() calls this with the prompt length (the first generated position)."""
        self.begin_index = begin_index

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        mask = self.at_begin if input_ids.shape[-1] == self.begin_index else self.always  # (V,)
        return scores.masked_fill(mask.to(scores.device), float("-inf"))  # scores: (B * beams, V)


class FasterWhisper:
    """faster-whisper's ``WhisperModel`` on CPU: CTranslate2 with int8 weights, beam search of 5, no
    VAD, its own temperature fallback; one clip per call (any length: it slides its own 30-s windows).

    ``path``: a CTranslate2 Whisper dir holding ``tokenizer.json`` (faster-whisper would otherwise
    download one); default the tiny.en base. ``cpu_threads=0`` lets CTranslate2 choose.
    """

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        compute_type: str = "int8",
        beam_size: int = 5,
        cpu_threads: int = 0,
        language: str | None = "en",
        vad_filter: bool = False,
    ) -> None:
        try:
            from faster_whisper import WhisperModel
        except ImportError as e:
            raise ImportError(
                "faster-whisper is not installed: pip install faster-whisper==1.2.1 (pinned in requirements.txt)"
            ) from e
        if not isinstance(beam_size, int) or beam_size < 1:
            raise ValueError(f"beam_size must be a positive int, got {beam_size!r}")
        if not isinstance(cpu_threads, int) or cpu_threads < 0:
            raise ValueError(f"cpu_threads must be an int >= 0 (0: CTranslate2 chooses), got {cpu_threads!r}")
        self.path = Path(path) if path is not None else _default_whisper_dir()
        if not (self.path / "model.bin").is_file():
            raise FileNotFoundError(f"no CTranslate2 model.bin in {self.path} (faster-whisper runs CTranslate2 dirs)")
        if not (self.path / "tokenizer.json").is_file():
            raise FileNotFoundError(f"{self.path} has no tokenizer.json (faster-whisper would try to download one)")
        self.model = WhisperModel(str(self.path), device="cpu", compute_type=compute_type, cpu_threads=cpu_threads)
        self.english_only = not self.model.model.is_multilingual
        if self.english_only and language not in ("en", None):
            raise ValueError(f"{self.path} is an English-only Whisper: language must be 'en', got {language!r}")
        self.language = "en" if self.english_only else language
        self.beam_size, self.vad_filter = beam_size, vad_filter

    def transcribe(self, wav: torch.Tensor) -> str:
        """A mono 16 kHz float waveform (S,) -> its transcript, normalized as our references are."""
        _check_wav(wav)
        segments, _ = self.model.transcribe(
            wav.detach().float().cpu().numpy(), language=self.language, beam_size=self.beam_size, vad_filter=self.vad_filter
        )
        return normalize(" ".join(s.text for s in segments))  # a generator: decoding happens here

    def transcribe_batch(self, wavs: Sequence[torch.Tensor]) -> list[str]:
        """One clip after another (faster-whisper's batched pipeline is for VAD chunks of one recording)."""
        return [self.transcribe(w) for w in wavs]
