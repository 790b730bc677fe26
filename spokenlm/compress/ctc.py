"""The CTC compressor of Speech-LLaMA (Wu et al., 2023, §2.2 "CTC compressor").

A character CTC head (``Linear(input_dim, vocab.size)``, blank = 0) labels every encoder frame with
its greedy (argmax) CTC label; the labels decide which encoder *features* reach the LLM:

- ``blank_removal``: keep every frame whose label is not blank, one token per kept frame,
  span ``(t, t + 1)``.
- ``frame_averaging``: average each run of consecutive frames with the same non-blank label into one
  token, span ``[run start, run end)``; blank runs are dropped. Token ``i`` is then exactly character
  ``i`` of the greedy transcript (``char_alignment``).

With ``num_layers > 0`` a few Transformer layers sit between the encoder and the head (our addition
for frozen pretrained encoders such as Whisper's); the head reads their output and the compressor
pools that instead of the raw encoder features.

The output is features (``output_dim == input_dim``), not logits. The head is trained with
``ctc_loss``; the selection itself (an argmax) passes no gradient to the head, only to the features.

All-blank utterances: an item whose argmax is blank on every valid frame (untrained head, silence)
would otherwise give zero tokens. It gives ONE token instead, the mean of all its valid frames, with
span ``(0, T_i)``, in both modes.

Frames at or beyond ``lengths`` never contribute: not to tokens, spans, transcripts or the loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spokenlm.compress.base import CharSpan, CompressedOutput
from spokenlm.compress.beam import CTCBeamConfig, CTCBeamDecoder
from spokenlm.compress.vocab import BLANK, DEFAULT_ALPHABET, CharVocab
from spokenlm.encoders.base import EncoderOutput

CTCMode = Literal["blank_removal", "frame_averaging"]
_MODES = ("blank_removal", "frame_averaging")


@dataclass(frozen=True, kw_only=True)
class CTCCompressorConfig:
    input_dim: int
    """D of the encoder features; also the compressor's output_dim (it returns features)."""

    mode: CTCMode = "frame_averaging"
    """``blank_removal``: one token per non-blank frame; ``frame_averaging``: one per character."""

    alphabet: str = DEFAULT_ALPHABET
    """Characters of the CTC vocabulary (blank = 0 is added in front); see ``CharVocab``."""

    num_layers: int = 0
    """Pre-LN Transformer layers between the encoder and the head (0: a linear head on the encoder's
    features, as Speech-LLaMA). In front of a frozen pretrained encoder (Whisper, trained for its own
    decoder and not for CTC) a few layers let CTC re-read the features; the compressor then pools
    *their* output, the representation its head reads characters from."""

    num_heads: int = 4  # attention heads of those layers
    ffn_dim: int = 0  # their feed-forward width; 0: 4 * input_dim
    dropout: float = 0.1  # in those layers, training only

    beam: CTCBeamConfig | None = None
    """None: the transcript is the greedy path. Otherwise it is the lexicon + word-LM beam search of
    ``spokenlm.compress.beam`` over the head's log-probabilities, with the LM file that the compressor
    directory holds (``load_compressor`` attaches it); the tokens stay the greedy path's."""

    def __post_init__(self) -> None:
        if isinstance(self.beam, dict):  # as compressor.json / spokenlm.json hold it
            object.__setattr__(self, "beam", CTCBeamConfig(**self.beam))

    def validate(self) -> None:
        if isinstance(self.input_dim, bool) or not isinstance(self.input_dim, int) or self.input_dim < 1:
            raise ValueError(f"CTCCompressorConfig.input_dim must be a positive int, got {self.input_dim!r}")
        if self.mode not in _MODES:
            raise ValueError(
                f"CTCCompressorConfig.mode must be 'blank_removal' or 'frame_averaging', got {self.mode!r}"
            )
        CharVocab(self.alphabet)  # raises on an empty, duplicated or uppercase alphabet
        for name in ("num_layers", "ffn_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"CTCCompressorConfig.{name} must be an int >= 0, got {value!r}")
        if self.num_layers:
            if isinstance(self.num_heads, bool) or not isinstance(self.num_heads, int) or self.num_heads < 1:
                raise ValueError(f"CTCCompressorConfig.num_heads must be a positive int, got {self.num_heads!r}")
            if self.input_dim % self.num_heads:
                raise ValueError(
                    f"CTCCompressorConfig.input_dim {self.input_dim} is not divisible by num_heads {self.num_heads}"
                )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"CTCCompressorConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if self.beam is not None:
            if not isinstance(self.beam, CTCBeamConfig):
                raise ValueError(f"CTCCompressorConfig.beam must be a CTCBeamConfig or None, got {self.beam!r}")
            self.beam.validate()


class CTCCompressor(nn.Module):
    """Encoder frames -> CTC-selected (blank removal) or CTC-averaged (frame averaging) features."""

    def __init__(self, config: CTCCompressorConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.vocab = CharVocab(config.alphabet)
        self.output_dim = config.input_dim
        self.context = _context_layers(config) if config.num_layers else None
        self.head = nn.Linear(config.input_dim, self.vocab.size)
        self.beam: CTCBeamDecoder | None = None  # attach_lm: config.beam's search, once its LM file is known
        self.lm_path: Path | None = None

    def attach_lm(self, lm_path: str | Path) -> None:
        """Read transcripts with ``config.beam``'s search over the ARPA LM at ``lm_path``."""
        if self.config.beam is None:
            raise ValueError("this CTC compressor's config has no beam settings (CTCCompressorConfig.beam)")
        self.beam = CTCBeamDecoder(self.vocab, lm_path, self.config.beam)
        self.lm_path = Path(lm_path)

    def features(self, encoded: EncoderOutput) -> Tensor:
        """(B, T, D) what the head reads and the compressor pools: the encoder's features, or the
        context layers' output over them (padded frames masked out of attention)."""
        if self.context is None:
            return encoded.features
        _check_lengths(encoded.lengths, encoded.features.shape[1])
        frames = torch.arange(encoded.features.shape[1], device=encoded.features.device)
        padded = frames >= encoded.lengths.to(frames.device)[:, None]  # (B, T)
        return self.context(encoded.features, src_key_padding_mask=padded)

    def ctc_log_probs(self, encoded: EncoderOutput, features: Tensor | None = None) -> Tensor:
        """(B, T, V) float32 log-probabilities; rows at or beyond lengths are meaningless.
        ``features``: ``self.features(encoded)`` when the caller has it already."""
        features = self.features(encoded) if features is None else features
        return self.head(features).float().log_softmax(dim=-1)

    def forward(self, encoded: EncoderOutput) -> CompressedOutput:
        lengths = encoded.lengths
        _check_lengths(lengths, encoded.features.shape[1])
        features = self.features(encoded)
        log_probs = self.ctc_log_probs(encoded, features)  # (B, T, V)
        keep, starts = _segments(
            log_probs.argmax(dim=-1), lengths, per_frame=self.config.mode == "blank_removal", all_blank_fallback=True
        )
        embeddings, token_lengths = _pool(features, keep, starts)
        seconds = lengths.to(token_lengths.device, torch.float32) / encoded.frame_rate_hz
        return CompressedOutput(
            embeddings=embeddings,
            lengths=token_lengths,
            spans=_spans(keep, starts),
            frame_rate_hz=encoded.frame_rate_hz,
            tokens_per_second=token_lengths.to(torch.float32) / seconds,
            ctc_log_probs=log_probs,
            chars=self.char_alignment(log_probs, lengths) if self.beam is None else self.beam.decode(log_probs, lengths),
        )

    def ctc_loss(self, encoded: EncoderOutput, texts: list[str]) -> Tensor:
        """CTC negative log-likelihood of ``texts`` (blank 0), summed over each utterance's frames and
        averaged over the batch (not divided by text length, unlike torch's ``reduction="mean"``).

        Texts are normalised by ``CharVocab.encode``. A text with no alphabet characters left, or one
        that needs more frames than its item has (characters + adjacent repeats, which CTC must separate
        with a blank), raises ValueError naming the item; ``zero_infinity=True`` is only a safety net.
        """
        lengths = encoded.lengths
        batch, frames = encoded.features.shape[:2]
        _check_lengths(lengths, frames)
        if len(texts) != batch:
            raise ValueError(f"got {len(texts)} texts for a batch of {batch}")
        targets = [self.vocab.encode(text) for text in texts]
        for i, (text, ids, n) in enumerate(zip(texts, targets, lengths.tolist())):
            if not ids:
                raise ValueError(f"text {i} has no characters in the CTC alphabet: {text!r}")
            repeats = sum(a == b for a, b in zip(ids, ids[1:]))
            if len(ids) + repeats > n:
                raise ValueError(
                    f"text {i} needs at least {len(ids) + repeats} frames for CTC ({len(ids)} characters, "
                    f"{repeats} adjacent repeats) but item {i} has {n}: {text!r}"
                )
        log_probs = self.ctc_log_probs(encoded).transpose(0, 1)  # (T, B, V) as F.ctc_loss wants
        device = log_probs.device
        losses = F.ctc_loss(
            log_probs,
            torch.tensor([i for ids in targets for i in ids], dtype=torch.long, device=device),
            lengths.to(device=device, dtype=torch.long),
            torch.tensor([len(ids) for ids in targets], dtype=torch.long, device=device),
            blank=BLANK,
            reduction="none",
            zero_infinity=True,
        )  # (B,)
        return losses.mean()

    def greedy_transcripts(self, ctc_log_probs: Tensor, lengths: Tensor) -> list[str]:
        """Best-path CTC decoding: argmax per valid frame, collapse repeats, drop blanks. May be ""."""
        return ["".join(c.char for c in item) for item in self.char_alignment(ctc_log_probs, lengths)]

    def char_alignment(self, ctc_log_probs: Tensor, lengths: Tensor) -> list[list[CharSpan]]:
        """Per item, each character of the greedy transcript with its [start, end) frame span.

        A character's span is its run of identical argmax labels (the blanks around it belong to no
        character); divide by ``frame_rate_hz`` for seconds. One Python loop per item builds the lists.
        """
        _check_lengths(lengths, ctc_log_probs.shape[1])
        labels = ctc_log_probs.argmax(dim=-1)  # (B, T)
        keep, starts = _segments(labels, lengths, per_frame=False, all_blank_fallback=False)
        spans = _spans(keep, starts)
        labels = labels.tolist()
        return [
            [CharSpan(self.vocab.alphabet[labels[b][s] - 1], s, e) for s, e in item] for b, item in enumerate(spans)
        ]


def _context_layers(config: CTCCompressorConfig) -> nn.Module:
    layer = nn.TransformerEncoderLayer(
        config.input_dim, config.num_heads, config.ffn_dim or 4 * config.input_dim, config.dropout,
        activation="gelu", batch_first=True, norm_first=True,
    )  # fmt: skip
    # pre-LN layers end un-normalised: a final LayerNorm, as pre-LN Transformers have
    norm = nn.LayerNorm(config.input_dim)
    return nn.TransformerEncoder(layer, config.num_layers, norm=norm, enable_nested_tensor=False)


def _check_lengths(lengths: Tensor, frames: int) -> None:
    if lengths.dim() != 1:
        raise ValueError(f"lengths must be 1-D (B,), got shape {tuple(lengths.shape)}")
    bad = [(i, n) for i, n in enumerate(lengths.tolist()) if not 1 <= n <= frames]
    if bad:
        i, n = bad[0]
        raise ValueError(f"item {i} has length {n}; lengths must be in [1, {frames}] (the padded frame count)")


def _segments(labels: Tensor, lengths: Tensor, *, per_frame: bool, all_blank_fallback: bool) -> tuple[Tensor, Tensor]:
    """Which frames feed a token, and which frames open one; both (B, T) bool.

    labels: (B, T) argmax CTC ids. per_frame: every kept frame is its own token (blank removal);
    otherwise a token is a run of one repeated non-blank label. With all_blank_fallback an item with no
    non-blank valid frame keeps all its valid frames as one token opened at frame 0.
    """
    frames = torch.arange(labels.shape[1], device=labels.device)
    valid = frames < lengths.to(labels.device).unsqueeze(1)  # (B, T)
    keep = valid & (labels != BLANK)
    if per_frame:
        starts = keep.clone()
    else:
        changed = torch.ones_like(keep)
        changed[:, 1:] = labels[:, 1:] != labels[:, :-1]
        starts = keep & changed  # a run of a non-blank label starts where the label changes
    if all_blank_fallback:
        empty = ~keep.any(dim=1, keepdim=True)  # (B, 1)
        keep = torch.where(empty, valid, keep)
        starts = torch.where(empty, frames == 0, starts)
    return keep, starts


def _token_slots(keep: Tensor, starts: Tensor) -> tuple[Tensor, Tensor, int]:
    """Flat slot ``b * N + token`` of every kept frame (batch-major order), tokens per item, and N."""
    token = starts.long().cumsum(dim=1) - 1  # (B, T) index of the token each kept frame belongs to
    lengths = starts.sum(dim=1)  # (B,)
    n_max = int(lengths.max()) if lengths.numel() else 0
    slot = (torch.arange(keep.shape[0], device=keep.device).unsqueeze(1) * n_max + token)[keep]  # (K,)
    return slot, lengths, n_max


def _pool(features: Tensor, keep: Tensor, starts: Tensor) -> tuple[Tensor, Tensor]:
    """Mean of the kept frames of each token, one scatter over the whole batch.

    features: (B, T, D); keep, starts: (B, T) bool, every kept run opened by a start.
    Returns embeddings (B, N, D) zero-padded and lengths (B,) int64.
    """
    batch, _, dim = features.shape
    slot, lengths, n_max = _token_slots(keep, starts)
    sums = features.new_zeros(batch * n_max, dim).index_add(0, slot, features[keep])
    counts = torch.zeros(batch * n_max, dtype=torch.long, device=keep.device)
    counts.index_add_(0, slot, torch.ones_like(slot))
    embeddings = sums / counts.clamp(min=1).unsqueeze(1).to(sums.dtype)  # empty slots stay 0
    return embeddings.view(batch, n_max, dim), lengths


def _spans(keep: Tensor, starts: Tensor) -> list[list[tuple[int, int]]]:
    """Per item, per token: [first kept frame, last kept frame + 1); vectorised, then one loop per item
    to cut the flat result into Python lists."""
    batch, frames = keep.shape
    slot, lengths, n_max = _token_slots(keep, starts)
    t = torch.arange(frames, device=keep.device).expand(batch, frames)
    ends = torch.zeros(batch * n_max, dtype=torch.long, device=keep.device)
    ends.scatter_reduce_(0, slot, t[keep] + 1, reduce="amax")
    firsts, ends = t[starts].tolist(), ends.view(batch, n_max).tolist()  # firsts: batch-major, flat
    spans, offset = [], 0
    for b, n in enumerate(lengths.tolist()):
        spans.append(list(zip(firsts[offset : offset + n], ends[b][:n])))
        offset += n
    return spans
