"""Recipe `ctc-lm`: a word n-gram LM for the CTC compressor's transcript, tuned on dev.

    spokenlm train ctc-lm --config configs/ctc_lm.yaml

1. Estimate an interpolated Kneser-Ney n-gram model (`spokenlm.ngram`) from the transcripts of the
   train split only: dev and test sentences stay unseen, so their figures are held-out ones. With
   `extra_text`, the shared English text sources it names (spokenlm.data.text: LJSpeech, Tatoeba,
   ...) add their sentences, normalized as the corpus's, except every sentence of any other split
   of the manifests (and the train split's own, which the transcripts already count): the LM knows
   English beyond the corpus's ~18k train sentences, and still no dev or test sentence.
   `min_top_count` prunes the highest order's rare n-grams to keep the file small.
2. Encode `dev_utterances` dev recordings once with the frozen encoder, take the CTC compressor's
   log-probabilities, and read them greedily and with the lexicon beam search
   (`spokenlm.compress.beam`) at every (lm_weight, word_score) of the grid.
3. Write OUT/compressor/: the compressor (same weights) with the best setting's beam config and the
   gzipped ARPA file, so `compressor_dir: OUT/compressor` gives the speechlm recipe and the bundle
   the LM's transcripts; plus metrics.json with every setting's dev WER / CER and examples.
4. With `folds: K`, also OUT/folds/fold<i>.arpa.gz: K more LMs, fold i's without the train sentences
   of fold i (`transcript_fold`; the extra text holds no train sentence). The speechlm recipe reads each train utterance's prompt transcript
   with the LM that never saw its sentence (`train_transcript_lms: OUT/folds`), so its transcripts
   in training are as wrong as dev's and test's are with the full LM (a jackknife). With the full LM
   they would be far cleaner (measured on 200 train utterances: WER 0.096 against dev's 0.209), and
   the LLM would learn to trust them more than it should.

Counting n-grams and searching 300 dev utterances per grid point take minutes (2.6 for the
committed config, 6.3 beside a training run): there is no training loop, no checkpoint and no
Ray Train worker split (`--workers` is refused).
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from spokenlm.compress import CTCCompressor, load_compressor, save_compressor
from spokenlm.compress.beam import CTCBeamConfig
from spokenlm.ngram import fit_ngram


FOLDS_FILE = "folds.json"


def transcript_fold(text: str, folds: int) -> int:
    """The jackknife fold of a train sentence: by a hash of its text, so every utterance of one
    sentence (several voices, several tasks) is in the same fold."""
    return int(hashlib.sha1(text.encode("utf-8")).hexdigest(), 16) % folds


def fold_lm_files(folds_dir: str | Path) -> list[Path]:
    """The K fold LMs a ctc-lm run wrote (OUT/folds), in fold order; errors name what is missing."""
    folds_dir = Path(folds_dir)
    index = folds_dir / FOLDS_FILE
    if not index.is_file():
        raise FileNotFoundError(f"{index} not found: not the folds dir of a ctc-lm run with folds > 1")
    files = [folds_dir / name for name in json.loads(index.read_text())["files"]]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"{folds_dir}: fold LMs missing: {missing}")
    return files


def _write_gzipped_arpa(lm, path: Path) -> Path:
    """The LM as gzipped ARPA, byte for byte the same for the same LM: no time in the gzip header
    (mtime=0), since the speechlm recipe's token cache keys on the LM file's bytes."""
    arpa = path.with_suffix("")  # lm.arpa.gz -> lm.arpa
    lm.write_arpa(arpa)
    with open(arpa, "rb") as src, open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9, mtime=0) as dst:
        shutil.copyfileobj(src, dst)
    arpa.unlink()
    return path


@dataclass(frozen=True, kw_only=True)
class CTCLMConfig:
    out_dir: str
    manifest: str | tuple[str, ...]
    compressor_dir: str  # the ctc recipe's OUT/compressor
    encoder_base: str | None = None  # the frozen encoder the compressor was trained over (a known base),
    encoder_dir: str | None = None  # ... or a saved one (the ctc recipe's OUT/encoder): exactly one of the two
    encoder_overrides: dict = field(default_factory=dict)
    train_split: str = "fine-tune"
    dev_split: str = "dev"
    order: int = 3
    lm_weights: tuple[float, ...] = (0.5, 1.0, 1.5)
    word_scores: tuple[float, ...] = (0.0, 1.0, 2.0)
    beam_size: int = 50
    dev_utterances: int = 300  # the first ones in id-hash order (a fixed sample that mixes sources)
    max_duration_s: float = 30.0
    examples: int = 8
    folds: int = 0  # > 1: also write the jackknife LMs of step 4 (OUT/folds)
    extra_text: tuple[str, ...] = ()  # shared text sources (spokenlm.data.text.TEXT_FILES) the LM also counts
    data_dir: str | None = None  # the shared data folder (default: ../shared/data beside the repository)
    min_top_count: int = 1  # the highest order's n-grams seen fewer times are pruned (spokenlm.ngram)

    def validate(self) -> None:
        check_encoder_source("ctc-lm", self.encoder_base, self.encoder_dir)
        if not self.lm_weights or not self.word_scores:
            raise ValueError("lm_weights and word_scores need at least one value each")
        for lm_weight in self.lm_weights:
            for word_score in self.word_scores:
                CTCBeamConfig(lm_weight=lm_weight, word_score=word_score, beam_size=self.beam_size).validate()
        if not isinstance(self.folds, int) or self.folds == 1 or not 0 <= self.folds <= 20:
            raise ValueError(f"folds must be 0 (none) or an int in [2, 20], got {self.folds!r}")
        if not isinstance(self.dev_utterances, int) or self.dev_utterances < 1:
            raise ValueError(f"dev_utterances must be a positive int, got {self.dev_utterances!r}")
        from spokenlm.data.text import TEXT_FILES

        unknown = [name for name in self.extra_text if name not in TEXT_FILES]
        if unknown:
            raise ValueError(f"unknown extra_text source(s) {', '.join(map(repr, unknown))}; expected some of {', '.join(TEXT_FILES)}")
        if not isinstance(self.min_top_count, int) or isinstance(self.min_top_count, bool) or self.min_top_count < 1:
            raise ValueError(f"min_top_count must be an int >= 1, got {self.min_top_count!r}")


def extra_sentences(config: CTCLMConfig, utts: list) -> list[str]:
    """The `extra_text` sources' sentences, normalized, each once: none that is the transcript of an
    utterance of `utts` (every split: the held-out ones stay unseen, the train split's are counted
    from its transcripts)."""
    from spokenlm.data.text import load_text_source, normalize

    known = {u.labels["text"] for u in utts if u.labels.get("text")}
    sentences = (normalize(s.text) for name in config.extra_text for s in load_text_source(name, config.data_dir))
    return [t for t in dict.fromkeys(sentences) if t and t not in known]


def check_encoder_source(recipe: str, encoder_base: str | None, encoder_dir: str | None) -> None:
    """The frozen encoder of a recipe that reads a CTC compressor: exactly one of a known base and a dir."""
    if (encoder_base is None) == (encoder_dir is None):
        raise ValueError(f"{recipe} needs exactly one of encoder_base and encoder_dir")
    from spokenlm.bases import KNOWN_BASES

    if encoder_base is not None and encoder_base not in KNOWN_BASES:
        raise ValueError(f"unknown encoder_base {encoder_base!r}; expected one of {', '.join(KNOWN_BASES)}")


def load_ctc_reader(config) -> tuple[torch.nn.Module, CTCCompressor]:
    """(encoder, CTC compressor), in eval mode, of a config with compressor_dir, encoder_base or
    encoder_dir and encoder_overrides (this recipe's, the transcriber recipe's)."""
    from spokenlm.bases import base_or_dir
    from spokenlm.encoders import load_encoder, with_config

    compressor = load_compressor(config.compressor_dir).eval()
    if not isinstance(compressor, CTCCompressor):
        raise ValueError(f"{config.compressor_dir} is a {type(compressor).__name__}, not a CTC compressor")
    source = base_or_dir(config.encoder_base, config.encoder_dir)
    return with_config(load_encoder(source), dict(config.encoder_overrides), source=source).eval(), compressor


def train(config: CTCLMConfig) -> dict:
    import jiwer

    from spokenlm.speech import encode_chunks, join_chunks
    from spokenlm.train.data import AudioCache, id_hash_order, read_manifest
    from spokenlm.train.loop import world_size

    config.validate()
    if world_size() > 1:
        raise ValueError("ctc-lm has no training loop to split: run it without --workers")
    started = time.monotonic()
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    every = read_manifest(config.manifest)
    utts = [u for u in every if u.split in (config.train_split, config.dev_split)]
    texts = [u.labels["text"] for u in utts if u.split == config.train_split and u.labels.get("text")]
    dev = [u for u in utts if u.split == config.dev_split and u.labels.get("text")
           and u.duration_s <= config.max_duration_s]  # fmt: skip
    if not texts or not dev:
        raise ValueError(f"{config.manifest}: need transcripts in both {config.train_split!r} and {config.dev_split!r}")
    dev = id_hash_order(dev)[: config.dev_utterances]
    seen = set(texts)
    leaked = sum(u.labels["text"] in seen for u in dev)  # the corpus holds none; a user's may

    # 1. the LM, from train transcripts (and the extra text) only
    extra = extra_sentences(config, every)
    lm = fit_ngram(texts + extra, config.order, min_top_count=config.min_top_count)
    lm_path = _write_gzipped_arpa(lm, out / "lm.arpa.gz")
    if config.folds > 1:  # step 4: the jackknife LMs
        (out / "folds").mkdir(exist_ok=True)
        files = []
        for fold in range(config.folds):
            kept = [t for t in texts if transcript_fold(t, config.folds) != fold] + extra
            fold_lm = fit_ngram(kept, config.order, min_top_count=config.min_top_count)
            files.append(_write_gzipped_arpa(fold_lm, out / "folds" / f"fold{fold}.arpa.gz").name)
        (out / "folds" / FOLDS_FILE).write_text(json.dumps({"folds": config.folds, "files": files}, indent=2) + "\n")

    # 2. dev: encode once, then read the same log-probabilities every way
    encoder, compressor = load_ctc_reader(config)
    audio = AudioCache()
    waves = [audio.get(u) for u in dev]
    with torch.inference_mode():
        batches = encode_chunks(encoder, waves, max_chunk_s=config.max_duration_s)
    durations = [u.duration_s for u in dev]
    refs = [u.labels["text"] for u in dev]

    def read(beam: CTCBeamConfig | None) -> tuple[list[str], float]:
        compressor.config = dataclasses.replace(compressor.config, beam=beam)
        compressor.beam = None
        if beam is not None:
            compressor.attach_lm(lm_path)
        t0 = time.perf_counter()
        with torch.inference_mode():
            hyps = join_chunks(compressor, batches, durations).transcripts
        return hyps, (time.perf_counter() - t0) / len(dev) * 1e3

    greedy, greedy_ms = read(None)
    rows = [{"setting": "greedy", "wer": jiwer.wer(refs, greedy), "cer": jiwer.cer(refs, greedy), "ms_per_utterance": greedy_ms}]
    best, best_hyps = None, greedy
    for lm_weight in config.lm_weights:
        for word_score in config.word_scores:
            beam = CTCBeamConfig(lm_weight=lm_weight, word_score=word_score, beam_size=config.beam_size)
            hyps, ms = read(beam)
            row = {"setting": f"lm_weight={lm_weight} word_score={word_score}", "lm_weight": lm_weight,
                   "word_score": word_score, "wer": jiwer.wer(refs, hyps), "cer": jiwer.cer(refs, hyps),
                   "ms_per_utterance": ms}  # fmt: skip
            rows.append(row)
            print(f"ctc-lm: {row['setting']}: dev WER {row['wer']:.4f} CER {row['cer']:.4f} ({ms:.1f} ms/utt)")
            if best is None or row["wer"] < best[1]["wer"]:
                best, best_hyps = (beam, row), hyps

    # 3. the compressor with the best setting and its LM
    beam, row = best
    compressor.config = dataclasses.replace(compressor.config, beam=beam)
    compressor.attach_lm(lm_path)
    save_compressor(compressor, out / "compressor")
    lm_path.unlink()  # the copy in OUT/compressor is the one that is used
    metrics = {
        "stage": "ctc-lm",
        "compressor_dir": config.compressor_dir,
        "order": config.order,
        "lm_sentences": len(texts),
        "extra_text": list(config.extra_text),
        "extra_sentences": len(extra),
        "min_top_count": config.min_top_count,
        "lm_ngrams": {str(k): len(lm.logprobs[k]) for k in range(1, config.order + 1)},
        "lexicon_words": len(compressor.beam.words),
        "lm_file_mb": round((out / "compressor" / beam.lm_file).stat().st_size / 1e6, 2),
        "folds": config.folds,
        "dev_split": config.dev_split,
        "dev_utterances": len(dev),
        "dev_sentences_in_lm_text": leaked,
        "dev_greedy_wer": rows[0]["wer"],
        "dev_greedy_cer": rows[0]["cer"],
        "dev_wer": row["wer"],
        "dev_cer": row["cer"],
        "best": {"lm_weight": beam.lm_weight, "word_score": beam.word_score, "beam_size": beam.beam_size},
        "grid": rows,
        "wall_minutes": round((time.monotonic() - started) / 60, 2),
        "examples": [{"ref": r, "greedy": g, "beam": b}
                     for r, g, b in list(zip(refs, greedy, best_hyps))[: config.examples]],  # fmt: skip
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(f"ctc-lm: dev WER {rows[0]['wer']:.4f} greedy -> {row['wer']:.4f} with {row['setting']}; wrote {out / 'compressor'}")
    return metrics
