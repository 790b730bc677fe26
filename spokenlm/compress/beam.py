"""CTC beam search with a lexicon and a word n-gram LM: the CTC head's transcript, spelled in words.

A character CTC head read greedily spells what it hears ("the dwintyseven chapeter of the for
sesan"); the transcript then reaches the LLM's prompt, the entity times and the CTC lookup draft.
Searching the CTC lattice for the word sequence that the acoustic scores and a word n-gram LM agree
on (the lexicon beam search of wav2letter, Collobert et al., 2016; Pratap et al., 2019) fixes most of
those misspellings; in the ctc-lm recipe's dev run it added no measurable time to the
compressor's ~40 ms per utterance. The search is flashlight-text's, through torchaudio's
``ctc_decoder`` (KenLM reads the ARPA file, gzipped or not); the LM is ``spokenlm.ngram``'s.

The lexicon is the LM's vocabulary: every unigram spelled in the CTC alphabet. Words outside it
cannot be written (``unk_score`` -inf), which is the price of the method: measure it on speech whose
words the LM text lacks (LibriVox in ``bench default``).

Only the transcript changes: the compressor still segments and pools on the greedy path, so the
speech tokens the LLM reads are the same with and without the LM.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from spokenlm.compress.base import CharSpan
from spokenlm.compress.vocab import BLANK, CharVocab

_BLANK_TOKEN, _WORD_BREAK = "<blank>", "|"


@dataclass(frozen=True, kw_only=True)
class CTCBeamConfig:
    """How the CTC head's transcript is searched for (the LM file is the compressor dir's ``lm_file``)."""

    lm_file: str = "lm.arpa.gz"
    """The ARPA file, relative to the compressor directory."""

    lm_weight: float = 1.0
    """Weight of the LM's log10 probability (KenLM's unit, as flashlight adds it) against the acoustic
    natural-log one."""

    word_score: float = 1.0
    """Added per word: > 0 counters the LM's preference for fewer, shorter words."""

    beam_size: int = 50
    beam_threshold: float = 50.0
    """Hypotheses this far (log prob) below the best are dropped."""

    def validate(self) -> None:
        if not self.lm_file or Path(self.lm_file).is_absolute() or ".." in Path(self.lm_file).parts:
            raise ValueError(f"lm_file must be a file name inside the compressor dir, got {self.lm_file!r}")
        for name in ("lm_weight", "word_score", "beam_threshold"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not -100.0 <= float(value) <= 100.0 or value != value:
                raise ValueError(f"{name} must be a number in [-100, 100], got {value!r}")
        if self.beam_threshold <= 0:
            raise ValueError(f"beam_threshold must be > 0, got {self.beam_threshold}")
        if not isinstance(self.beam_size, int) or not 1 <= self.beam_size <= 1000:
            raise ValueError(f"beam_size must be an int in [1, 1000], got {self.beam_size!r}")


def arpa_unigrams(path: str | Path) -> list[str]:
    """The words of an ARPA file's 1-gram section (plain or gzipped), in file order."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    words, inside = [], False
    with opener(path, "rt", encoding="utf-8") as lines:
        for line in lines:
            line = line.strip()
            if line == "\\1-grams:":
                inside = True
            elif inside and line.startswith("\\"):
                break
            elif inside and line:
                fields = line.split("\t") if "\t" in line else line.split()
                if len(fields) < 2:
                    raise ValueError(f"{path}: malformed 1-gram line {line[:80]!r}")
                words.append(fields[1])
    if not words:
        raise ValueError(f"{path} has no \\1-grams: section: not an ARPA language model")
    return words


class SentenceLM:
    """log10 P(sentence) under an ARPA word LM (plain or gzipped), read by flashlight's KenLM as the
    beam search reads it: each word given the ones before it from <s>, then </s>; a word outside the
    LM's vocabulary scores as <unk>. The transcriber weighs readings the beam search did not write
    (Whisper's) with it."""

    def __init__(self, path: str | Path) -> None:
        from flashlight.lib.text.decoder.kenlm import KenLM
        from flashlight.lib.text.dictionary import Dictionary

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"word LM {path} not found")
        words = arpa_unigrams(path)
        if "<unk>" not in words or "</s>" not in words:
            raise ValueError(f"{path}: an ARPA LM without <unk> or </s> cannot score every sentence")
        self.path = path
        self._known = set(words)
        self._dictionary = Dictionary(words)
        with _quiet():
            self._lm = KenLM(str(path), self._dictionary)

    def log10_prob(self, text: str) -> float:
        """log10 P(<s> text </s>) of whitespace-separated words (normalized as the transcripts are)."""
        state, total = self._lm.start(False), 0.0
        for word in [*text.split(), "</s>"]:
            state, score = self._lm.score(state, self._dictionary.get_index(word if word in self._known else "<unk>"))
            total += score
        return total


def _closing_break(log_probs: Tensor, lengths: Tensor, space: int) -> Tensor:
    """(B, T + 1, V) ``log_probs`` with a frame that is surely a word break right after each item's
    last valid frame (the rest of the row is padding the search does not read)."""
    batch, frames, size = log_probs.shape
    out = torch.full((batch, frames + 1, size), -1e4)  # log(0), finite: flashlight sums these
    out[:, :frames] = log_probs
    rows = torch.arange(batch)
    out[rows, lengths.clamp(max=frames)] = -1e4
    out[rows, lengths.clamp(max=frames), space] = 0.0
    return out.contiguous()


@contextlib.contextmanager
def _quiet():
    """Silence file descriptors 1 and 2 for a moment: KenLM prints a progress bar on every load."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 1)
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)


class CTCBeamDecoder:
    """(B, T, V) CTC log-probabilities -> each item's best word sequence, as characters with frames."""

    def __init__(self, vocab: CharVocab, lm_path: str | Path, config: CTCBeamConfig) -> None:
        from torchaudio.models.decoder import ctc_decoder

        config.validate()
        lm_path = Path(lm_path)
        if not lm_path.is_file():
            raise FileNotFoundError(f"CTC language model {lm_path} not found")
        if " " not in vocab.alphabet:
            raise ValueError("the CTC alphabet has no space: a word beam search needs word breaks")
        self.vocab, self.config = vocab, config
        allowed = set(vocab.alphabet) - {" "}
        self.words = [w for w in arpa_unigrams(lm_path) if w and set(w) <= allowed]
        if not self.words:
            raise ValueError(f"{lm_path}: none of its words is spelled in the CTC alphabet {vocab.alphabet!r}")
        # ids as the head's: blank 0, then the alphabet, with the space as flashlight's word break
        tokens = [_BLANK_TOKEN] + [_WORD_BREAK if c == " " else c for c in vocab.alphabet]
        with tempfile.TemporaryDirectory() as tmp, _quiet():  # ctc_decoder reads the lexicon from a file
            lexicon = Path(tmp) / "lexicon.txt"
            lexicon.write_text("".join(f"{w} {' '.join(w)} {_WORD_BREAK}\n" for w in self.words), encoding="utf-8")
            self._decoder = ctc_decoder(
                lexicon=str(lexicon), tokens=tokens, lm=str(lm_path), nbest=1,
                beam_size=config.beam_size, beam_threshold=config.beam_threshold,
                lm_weight=config.lm_weight, word_score=config.word_score,
                blank_token=_BLANK_TOKEN, sil_token=_WORD_BREAK, unk_word="<unk>",
            )  # fmt: skip
        self._space = tokens.index(_WORD_BREAK)

    def decode(self, log_probs: Tensor, lengths: Tensor) -> list[list[CharSpan]]:
        """Per item, the characters of its best hypothesis, each with the one frame it starts at
        (``[start, start + 1)``: a beam path keeps no run lengths). An item may come out empty.

        Each word of the lexicon ends in a word break, which is what lets the search tell "a lot" from
        "alot"; the head writes breaks between words only, so each item gets one more frame, a
        certain break, to close its last word (without it that word is dropped)."""
        if log_probs.dim() != 3 or log_probs.shape[-1] != self.vocab.size:
            raise ValueError(f"log_probs must be (B, T, {self.vocab.size}), got {tuple(log_probs.shape)}")
        lengths = lengths.detach().cpu().to(torch.int64)
        emissions = _closing_break(log_probs.detach().float().cpu(), lengths, self._space)
        hyps = self._decoder(emissions, (lengths + 1).to(torch.int32))
        out = []
        for nbest, n in zip(hyps, lengths.tolist()):
            chars: list[CharSpan] = []
            if nbest:
                best, last = nbest[0], max(int(n) - 1, 0)
                # flashlight's path has a start state in front: its step t is frame t - 1
                for token, step in zip(best.tokens.tolist(), best.timesteps.tolist()):
                    frame = min(max(step - 1, 0), last)
                    if token == BLANK:
                        continue
                    char = " " if token == self._space else self.vocab.alphabet[token - 1]
                    if char == " " and (not chars or chars[-1].char == " "):
                        continue  # no leading or doubled word breaks
                    chars.append(CharSpan(char, int(frame), int(frame) + 1))
                while chars and chars[-1].char == " ":
                    chars.pop()
            out.append(chars)
        return out
