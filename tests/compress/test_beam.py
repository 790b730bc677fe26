"""The CTC head's transcript through the lexicon + word-LM beam search (spokenlm.compress.beam)."""

from __future__ import annotations

import dataclasses
import gzip
import json
import shutil

import pytest
import torch

from spokenlm.compress import CharVocab, CTCCompressor, CTCCompressorConfig, load_compressor, save_compressor, with_compressor_config
from spokenlm.compress.beam import CTCBeamConfig, CTCBeamDecoder, arpa_unigrams
from spokenlm.encoders.base import EncoderOutput
from spokenlm.ngram import fit_ngram

ALPHABET = "ehlop "
VOCAB = CharVocab(ALPHABET)


@pytest.fixture(scope="module")
def lm_path(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm")
    arpa = fit_ngram(["hello", "help", "hop", "hello hop", "help hop"], 2).write_arpa(root / "lm.arpa")
    with open(arpa, "rb") as src, gzip.open(root / "lm.arpa.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    return root / "lm.arpa.gz"


def emissions(frames: list[dict[str, float]], pad_to: int = 0) -> torch.Tensor:
    """(1, T, V) log-probs: each frame's listed labels ("_" = blank) get those probabilities, the rest
    share what is left; frames past the list (padding) strongly say "p"."""
    rows = []
    for probs in frames + [{"p": 0.99}] * (pad_to - len(frames)):
        row = torch.full((VOCAB.size,), 0.0)
        for label, p in probs.items():
            row[0 if label == "_" else ALPHABET.index(label) + 1] = p
        rest = (1.0 - row.sum()) / (row == 0).sum()
        rows.append(torch.where(row == 0, rest, row).log())
    return torch.stack(rows)[None]


# h e l l o with the blank between the l's unsure: greedy reads "helo", not a word of the lexicon
HELO = [{"h": 0.9}, {"e": 0.9}, {"l": 0.9}, {"l": 0.55, "_": 0.4}, {"l": 0.9}, {"o": 0.9}]
SPACE = [{" ": 0.9}]
HOP = [{"h": 0.9}, {"o": 0.9}, {"p": 0.6, "_": 0.3}]


def greedy(log_probs: torch.Tensor, n: int) -> str:
    labels = log_probs[0, :n].argmax(-1).tolist()
    out = [c for i, c in enumerate(labels) if c and (i == 0 or c != labels[i - 1])]
    return "".join(ALPHABET[c - 1] for c in out)


def test_the_search_spells_lexicon_words_where_greedy_misspells(lm_path):
    decoder = CTCBeamDecoder(VOCAB, lm_path, CTCBeamConfig(lm_weight=1.0, word_score=0.0))
    assert decoder.words == ["hello", "help", "hop"]  # the LM's unigrams less <s>, </s>, <unk>
    log_probs = emissions(HELO + SPACE + HOP)
    assert greedy(log_probs, log_probs.shape[1]) == "helo hop"
    (chars,) = decoder.decode(log_probs, torch.tensor([log_probs.shape[1]]))
    assert "".join(c.char for c in chars) == "hello hop"
    starts = [c.start_frame for c in chars]
    assert starts == sorted(starts) and all(c.end_frame == c.start_frame + 1 for c in chars)
    assert starts == [0, 1, 2, 4, 5, 6, 7, 8, 9]  # the second "l" after the blank-or-l frame 3


def test_frames_past_each_length_are_not_read(lm_path):
    decoder = CTCBeamDecoder(VOCAB, lm_path, CTCBeamConfig())
    short = emissions(HOP, pad_to=12)[0]
    long = emissions(HELO + SPACE + HOP, pad_to=12)[0]
    out = decoder.decode(torch.stack([short, long]), torch.tensor([len(HOP), len(HELO) + 1 + len(HOP)]))
    assert ["".join(c.char for c in item) for item in out] == ["hop", "hello hop"]


def _compressor(beam: CTCBeamConfig | None) -> CTCCompressor:
    torch.manual_seed(0)
    compressor = CTCCompressor(CTCCompressorConfig(input_dim=len(ALPHABET) + 1, alphabet=ALPHABET, beam=beam))
    with torch.no_grad():  # the head reads the features as log-probabilities
        compressor.head.weight.copy_(torch.eye(VOCAB.size))
        compressor.head.bias.zero_()
    return compressor.eval()


def test_a_compressor_with_an_lm_changes_its_transcript_not_its_tokens(lm_path, tmp_path):
    log_probs = emissions(HELO + SPACE + HOP)
    encoded = EncoderOutput(features=log_probs, lengths=torch.tensor([log_probs.shape[1]]), frame_rate_hz=50.0)
    plain = _compressor(None)
    with_lm = _compressor(CTCBeamConfig(lm_weight=1.0))
    with_lm.attach_lm(lm_path)
    a, b = plain(encoded), with_lm(encoded)
    assert torch.equal(a.embeddings, b.embeddings) and torch.equal(a.lengths, b.lengths) and a.spans == b.spans
    assert "".join(c.char for c in a.chars[0]) == "helo hop"
    assert "".join(c.char for c in b.chars[0]) == "hello hop"

    # saved and loaded: the LM file travels with the weights, the loaded one reads the same
    save_compressor(with_lm, tmp_path / "c")
    assert (tmp_path / "c" / "lm.arpa.gz").read_bytes() == lm_path.read_bytes()
    assert json.loads((tmp_path / "c" / "compressor.json").read_text())["beam"]["lm_weight"] == 1.0
    loaded = load_compressor(tmp_path / "c")
    assert loaded.config == with_lm.config and loaded.beam is not None
    assert loaded(encoded).chars == b.chars

    (tmp_path / "c" / "lm.arpa.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"CTC language model .*lm\.arpa\.gz not found"):
        load_compressor(tmp_path / "c")


def test_beam_settings_without_an_lm_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"beam settings but no LM attached \(attach_lm\)"):
        save_compressor(_compressor(CTCBeamConfig()), tmp_path / "c")
    with pytest.raises(ValueError, match=r"has no beam settings \(CTCCompressorConfig.beam\)"):
        _compressor(None).attach_lm(tmp_path / "lm.arpa")


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"lm_file": "/etc/lm.arpa"}, "lm_file must be a file name inside the compressor dir, got '/etc/lm.arpa'"),
        ({"lm_file": "../lm.arpa"}, "lm_file must be a file name inside the compressor dir"),
        ({"lm_weight": float("nan")}, r"lm_weight must be a number in \[-100, 100\], got nan"),
        ({"word_score": 1e9}, r"word_score must be a number in \[-100, 100\]"),
        ({"beam_size": 0}, r"beam_size must be an int in \[1, 1000\], got 0"),
        ({"beam_threshold": 0.0}, "beam_threshold must be > 0, got 0.0"),
    ],
)
def test_bad_beam_settings_are_named(changes, message):
    with pytest.raises(ValueError, match=message):
        CTCCompressorConfig(input_dim=4, alphabet="ab ", beam=CTCBeamConfig(**changes)).validate()


def test_a_beam_config_read_from_json_comes_back_typed():
    config = CTCCompressorConfig(input_dim=4, alphabet="ab ", beam=dataclasses.asdict(CTCBeamConfig(lm_weight=2.0)))
    assert config.beam == CTCBeamConfig(lm_weight=2.0)


def test_lm_files_and_vocabularies_that_cannot_work_are_named(lm_path, tmp_path):
    (tmp_path / "x.arpa").write_text("hello world\n")
    with pytest.raises(ValueError, match=r"x\.arpa has no \\1-grams: section: not an ARPA language model"):
        arpa_unigrams(tmp_path / "x.arpa")
    with pytest.raises(ValueError, match="the CTC alphabet has no space: a word beam search needs word breaks"):
        CTCBeamDecoder(CharVocab("ehlop"), lm_path, CTCBeamConfig())
    with pytest.raises(ValueError, match=r"none of its words is spelled in the CTC alphabet 'xyz '"):
        CTCBeamDecoder(CharVocab("xyz "), lm_path, CTCBeamConfig())
    with pytest.raises(ValueError, match=r"log_probs must be \(B, T, 7\), got \(1, 3, 5\)"):
        CTCBeamDecoder(VOCAB, lm_path, CTCBeamConfig()).decode(torch.zeros(1, 3, 5), torch.tensor([3]))


def test_sentence_lm_scores_each_word_then_the_end_as_the_model_does(lm_path, tmp_path):
    from spokenlm.compress.beam import SentenceLM
    from spokenlm.ngram import BOS, EOS

    model = fit_ngram(["hello", "help", "hop", "hello hop", "help hop"], 2)  # the lm_path fixture's
    lm = SentenceLM(lm_path)
    for text in ["hello hop", "hop", "", "hello zebra hop"]:  # "zebra": not in the LM, scored as <unk>
        words = [*text.split(), EOS]
        expected = sum(model.log10_prob(w, tuple([BOS, *words[:i]])) for i, w in enumerate(words))
        assert lm.log10_prob(text) == pytest.approx(expected, abs=1e-5), text
    assert lm.log10_prob("hello hop") > lm.log10_prob("hop hello")
    with pytest.raises(FileNotFoundError, match=r"^word LM .*missing\.arpa not found$"):
        SentenceLM(tmp_path / "missing.arpa")


def test_the_committed_part_s_word_lm_is_the_one_its_ctc_lm_run_picked():
    """models/parts/speechlm: the bundle's compressor searches with the LM and setting that its ctc-lm
    run (metrics in models/parts/speechlm/ctc_lm) picked on dev, over a lexicon of that run's size."""
    import json
    from pathlib import Path

    from spokenlm.compress import load_compressor

    part = Path(__file__).resolve().parents[2] / "models" / "parts" / "speechlm"
    metrics = json.loads((part / "ctc_lm" / "metrics.json").read_text())
    compressor = load_compressor(part / "bundle" / "compressor")
    beam = compressor.config.beam
    assert {"lm_weight": beam.lm_weight, "word_score": beam.word_score, "beam_size": beam.beam_size} == metrics["best"]
    assert len(compressor.beam.words) == metrics["lexicon_words"]
    assert (part / "bundle" / "compressor" / beam.lm_file).stat().st_size / 1e6 == pytest.approx(metrics["lm_file_mb"], abs=0.01)


def test_overrides_keep_the_word_lm(lm_path):
    with_lm = _compressor(CTCBeamConfig(lm_weight=1.0))
    with_lm.attach_lm(lm_path)
    removal = with_compressor_config(with_lm, {"mode": "blank_removal"})
    assert removal.lm_path == lm_path and removal.config.mode == "blank_removal"
    log_probs = emissions(HELO + SPACE + HOP)
    encoded = EncoderOutput(features=log_probs, lengths=torch.tensor([log_probs.shape[1]]), frame_rate_hz=50.0)
    assert removal(encoded).chars == with_lm(encoded).chars
