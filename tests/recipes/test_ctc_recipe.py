"""The `ctc` recipe on the tiny espeak corpus (tests/recipes/conftest.py) with a ~100K-parameter DinoSR.

One 150-step run is shared by the module: it must learn (loss and train-set greedy CER far below the
untrained model's), resume exactly, and leave an encoder and a compressor that load, assemble into a
bundle and run `spokenlm run --task asr`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from spokenlm.recipes.ctc import (
    CTCTrainConfig,
    build_start_encoder,
    frame_masking,
    frame_projection,
    train,
    usable_utterances,
)
from spokenlm.encoders import with_overrides
from spokenlm.train.loop import OptimConfig

# ~108K parameters: 2 layers of dim 64 on a 16-channel fbank frontend, 50 Hz, no dropout
TINY = {
    "model_dim": 64, "num_layers": 2, "num_heads": 4, "ffn_dim": 128, "fbank_channels": 16,
    "pos_conv_depth": 2, "pos_conv_kernel": 9, "pos_conv_groups": 4, "dropout": 0.0,
    "attention_dropout": 0.0, "num_codebooks": 2,
}  # fmt: skip


def _config(out: Path, manifest: Path, **changes) -> CTCTrainConfig:
    """Measured on the tiny corpus: 150 steps take ~15 s and reach train-set CER ~0.5 from ~2.0."""
    base = CTCTrainConfig(
        out_dir=str(out),
        manifest=str(manifest),
        encoder_preset="dinosr_tiny",
        encoder_overrides=TINY,
        dev_split="fine-tune",  # 20 clips are too few to generalise: measure the fit to them
        max_batch_s=15.0,
        mask_time_prob=0.0,  # masking slows learning on 20 clips; tested on its own below
        mask_channel_prob=0.0,
        eval_every=50,
        eval_max_utts=20,
        optim=OptimConfig(lr=3e-3, warmup_steps=10, max_steps=150),
    )
    return replace(base, **changes)


@pytest.fixture(scope="module")
def trained(tiny_corpus, tmp_path_factory) -> tuple[CTCTrainConfig, dict]:
    config = _config(tmp_path_factory.mktemp("ctc") / "out", tiny_corpus)
    return config, train(config)


def test_ctc_learns_from_transcripts(trained):
    config, summary = trained
    out = Path(config.out_dir)
    assert summary["steps"] == 150 and summary["train_utterances"] == 20 and summary["workers"] == 1
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses[-1] < 0.5 * losses[0]
    # learned something: characters, not just blanks (an all-blank model scores CER 1.0)
    assert summary["dev_cer_start"] > 1.0
    assert summary["dev_cer"] < 0.8
    assert summary["dev_loss"] < 0.3 * summary["dev_loss_start"]
    # frame averaging: one token per emitted character, far fewer than 50 frames per second
    assert 1.0 < summary["dev_tokens_per_second"] < 20.0
    assert summary["dev_tokens_per_second"] == summary["dev_tokens_per_second_frame_averaging"]
    assert summary["dev_tokens_per_second"] <= summary["dev_tokens_per_second_blank_removal"] < 50.0
    assert summary["examples"] and {"ref", "hyp"} == set(summary["examples"][0])
    for name in ("encoder/encoder.json", "compressor/compressor.json", "metrics.json", "loss.png"):
        assert (out / name).is_file(), name
    assert json.loads((out / "metrics.json").read_text())["dev_cer"] == summary["dev_cer"]


def test_resume_continues_where_the_run_stopped(trained):
    config, summary = trained
    out = Path(config.out_dir)
    shutil.rmtree(out / "checkpoints" / "step-150")  # as if stopped right after the step-100 checkpoint
    resumed = train(config)
    assert resumed["steps"] == 150
    # data order and masks are functions of the step, the optimiser state is restored: the same run
    assert resumed["dev_loss"] == pytest.approx(summary["dev_loss"], rel=1e-4)
    assert resumed["dev_cer_start"] == summary["dev_cer_start"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert sum(1 for r in rows if r["step"] == 0) == 1  # the baseline is measured once, not on resume


def test_a_finished_run_returns_its_summary_and_rewrites_nothing(trained, tmp_path):
    config, _ = trained
    out = tmp_path / "out"
    shutil.copytree(config.out_dir, out)
    config = replace(config, out_dir=str(out))
    written = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert train(config) == json.loads((out / "metrics.json").read_text())
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == written
    # a larger budget continues the run
    assert train(replace(config, optim=replace(config.optim, max_steps=160)))["steps"] == 160


def test_outputs_load_and_run_asr_in_a_bundle(trained, tiny_corpus, tmp_path, capsys):
    from spokenlm.audio import batch_audio, load_audio
    from spokenlm.cli import main
    from spokenlm.compress import CTCCompressorConfig, load_compressor
    from spokenlm.demo import build_untrained_bundle
    from spokenlm.encoders import load_encoder
    from spokenlm.encoders.dinosr import dinosr_tiny
    from spokenlm.lm import GenerationConfig
    from spokenlm.model import load_bundle
    from spokenlm.tasks import TaskRequest

    config, summary = trained
    out = Path(config.out_dir)
    encoder, compressor = load_encoder(out / "encoder"), load_compressor(out / "compressor")
    assert compressor.config.mode == "frame_averaging" and compressor.output_dim == encoder.output_dim == 64

    # a bundle: the untrained tiny one for the same encoder shape, with our two directories put in
    bundle = build_untrained_bundle(
        tmp_path / "bundle",
        encoder=with_overrides(dinosr_tiny(), TINY),
        compressor=lambda dim: CTCCompressorConfig(input_dim=dim, mode="frame_averaging"),
    )
    for part in ("encoder", "compressor"):
        shutil.rmtree(bundle / part)
        shutil.copytree(out / part, bundle / part)

    clip = tiny_corpus.parent / "audio" / "u0.wav"
    wav = load_audio(clip)
    audio = batch_audio([wav])
    with torch.no_grad():
        encoded = encoder(audio.wav, audio.lengths)
        expected = compressor.greedy_transcripts(compressor(encoded).ctc_log_probs, encoded.lengths)[0]
    (output,) = load_bundle(bundle).run([wav], [TaskRequest(task="asr")], GenerationConfig(max_new_tokens=4))
    assert output.transcript == expected != ""

    assert main(["run", "--model", str(bundle), "--task", "asr", "--max-new-tokens", "4", "--json", str(clip)]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["task"] == "asr" and 1.0 < record["tokens_per_second"] < 20.0


def test_ctc_lm_gives_the_compressor_a_word_lm_picked_on_dev(trained, tiny_corpus, tmp_path):
    from spokenlm.compress import load_compressor
    from spokenlm.recipes.ctc_lm import CTCLMConfig
    from spokenlm.recipes.ctc_lm import train as train_lm

    config, _ = trained
    out = Path(config.out_dir)
    lm_config = CTCLMConfig(
        out_dir=str(tmp_path / "lm"), manifest=str(tiny_corpus), compressor_dir=str(out / "compressor"),
        encoder_dir=str(out / "encoder"), dev_split="fine-tune", lm_weights=(0.5, 3.0), word_scores=(0.0,),
        dev_utterances=8, folds=2,
    )  # fmt: skip
    metrics = train_lm(lm_config)
    # dev is the LM's own text here (the tiny corpus has 2 dev clips): the search reads the weak
    # 150-step head (CER ~0.5) better than greedy (measured: WER 0.90 -> 0.68), and says that its dev
    # sentences were in the LM text
    assert metrics["dev_sentences_in_lm_text"] == metrics["dev_utterances"] == 8
    assert metrics["dev_wer"] < 0.8 * metrics["dev_greedy_wer"]
    assert [r["setting"] for r in metrics["grid"]] == ["greedy", "lm_weight=0.5 word_score=0.0", "lm_weight=3.0 word_score=0.0"]
    assert metrics["dev_wer"] == min(r["wer"] for r in metrics["grid"][1:])

    compressor = load_compressor(tmp_path / "lm" / "compressor")
    assert compressor.config.beam.lm_weight == metrics["best"]["lm_weight"]
    rows = [json.loads(line) for line in Path(tiny_corpus).read_text().splitlines()]
    words = {w for r in rows if r["split"] == "fine-tune" for w in r["task_labels"]["text"].split()}
    assert set(compressor.beam.words) == words  # the lexicon: the train transcripts' words
    assert sorted(p.name for p in (tmp_path / "lm").iterdir()) == ["compressor", "folds", "metrics.json"]

    # the jackknife LMs: fold i's lacks the sentences of fold i, so their words that no other has
    from spokenlm.compress.beam import arpa_unigrams
    from spokenlm.recipes.ctc_lm import fold_lm_files, transcript_fold

    texts = [r["task_labels"]["text"] for r in rows if r["split"] == "fine-tune"]
    for fold, path in enumerate(fold_lm_files(tmp_path / "lm" / "folds")):
        assert path.name == f"fold{fold}.arpa.gz"
        kept = {w for t in texts if transcript_fold(t, 2) != fold for w in t.split()}
        assert set(arpa_unigrams(path)) - {"<s>", "</s>", "<unk>"} == kept != words

    with pytest.raises(ValueError, match="ctc-lm needs exactly one of encoder_base and encoder_dir"):
        train_lm(dataclasses.replace(lm_config, encoder_base="whisper-tiny.en"))


def test_ctc_lm_counts_extra_text_but_never_a_held_out_sentence(trained, tiny_corpus, tmp_path):
    """`extra_text`: the shared text sources' sentences join the LM's, normalized as the corpus's;
    a dev sentence among them stays out, a train one is not counted twice, and every fold LM has them."""
    from spokenlm.compress import load_compressor
    from spokenlm.compress.beam import arpa_unigrams
    from spokenlm.recipes.ctc_lm import CTCLMConfig, fold_lm_files
    from spokenlm.recipes.ctc_lm import train as train_lm

    from tests.recipes.conftest import HELDOUT, SENTENCES

    data = tmp_path / "data"
    (data / "text").mkdir(parents=True)
    (data / "text" / "harvard.txt").write_text(
        "The Zebra grazed near 2 lakes.\n" + HELDOUT[0].capitalize() + ".\n" + SENTENCES[0] + "\nA quiet Zebra slept.\n"
    )  # fmt: skip
    config, _ = trained
    out = Path(config.out_dir)
    lm_config = CTCLMConfig(
        out_dir=str(tmp_path / "lm"), manifest=str(tiny_corpus), compressor_dir=str(out / "compressor"),
        encoder_dir=str(out / "encoder"), lm_weights=(1.0,), word_scores=(0.0,), dev_utterances=2, folds=2,
        extra_text=("harvard",), data_dir=str(data), min_top_count=2,
    )  # fmt: skip
    metrics = train_lm(lm_config)
    assert (metrics["extra_sentences"], metrics["extra_text"], metrics["min_top_count"]) == (2, ["harvard"], 2)
    words = set(load_compressor(tmp_path / "lm" / "compressor").beam.words)
    assert {"zebra", "grazed", "two", "lakes", "quiet", "slept"} <= words  # "2" spoken, as the corpus writes it
    assert not {"pup", "gnawed", "sock"} & words  # the dev sentence's words that nothing else has
    for path in fold_lm_files(tmp_path / "lm" / "folds"):
        assert {"zebra", "slept"} <= set(arpa_unigrams(path))
    with pytest.raises(ValueError, match=r"^unknown extra_text source\(s\) 'novels'; expected some of ljspeech, harvard"):
        dataclasses.replace(lm_config, extra_text=("novels",)).validate()
    with pytest.raises(ValueError, match=r"^min_top_count must be an int >= 1, got 0$"):
        dataclasses.replace(lm_config, min_top_count=0).validate()


def test_frozen_encoder_steps_train_the_head_alone_with_masking_and_bf16(tiny_corpus, tmp_path):
    config = _config(
        tmp_path / "out", tiny_corpus, freeze_encoder_steps=3, mask_time_prob=0.3, mask_channel_prob=0.1,
        bf16=True, eval_max_utts=2, optim=OptimConfig(lr=3e-3, warmup_steps=1, max_steps=3),
    )  # fmt: skip
    from spokenlm.compress import CTCCompressor, CTCCompressorConfig, load_compressor
    from spokenlm.encoders import load_encoder

    torch.manual_seed(config.seed)  # what train() builds first, from the same seed
    start_encoder = build_start_encoder(config).state_dict()
    start_head = CTCCompressor(CTCCompressorConfig(input_dim=64)).head.weight.detach().clone()
    assert train(config)["steps"] == 3
    encoder = load_encoder(tmp_path / "out" / "encoder").state_dict()
    assert all(torch.equal(start_encoder[k], encoder[k]) for k in start_encoder)
    assert not torch.equal(start_head, load_compressor(tmp_path / "out" / "compressor").head.weight)


def test_a_time_budget_ends_the_run_and_stays_spent_on_resume(tiny_corpus, tmp_path):
    config = _config(
        tmp_path / "out", tiny_corpus, eval_max_utts=2,
        optim=OptimConfig(lr=3e-3, warmup_steps=2, max_steps=100_000, max_minutes=0.02, lr_over_minutes=True),
    )  # fmt: skip
    first = train(config)
    assert 1 <= first["steps"] < 1000 and first["wall_minutes"] >= 0.02
    again = train(config)  # the checkpoint carries the wall time: nothing is left to spend
    assert again["steps"] == first["steps"]


def test_frame_masking_masks_the_transformer_input_only_inside_the_block():
    from spokenlm.encoders.dinosr import dinosr_tiny

    encoder = build_start_encoder(
        CTCTrainConfig(out_dir="-", manifest="-", encoder_preset="dinosr_tiny", encoder_overrides=TINY)
    ).eval()
    assert encoder.config == with_overrides(dinosr_tiny(), TINY)
    config = CTCTrainConfig(out_dir="-", manifest="-", encoder_preset="dinosr_tiny", mask_time_prob=0.5,
                            mask_channel_prob=0.2)  # fmt: skip
    wav = torch.randn(2, 16000) * 0.1
    lengths = torch.tensor([16000, 12000])
    seen = []  # the Transformer's input frames, (B, T, D), of each forward pass
    probe = encoder.encoder.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    projection = frame_projection(encoder)
    with torch.no_grad():
        clean = encoder(wav, lengths).features
        with frame_masking(encoder, lengths, config, torch.Generator().manual_seed(0)):
            masked = encoder(wav, lengths).features
        again = encoder(wav, lengths).features
    probe.remove()
    assert not projection._forward_hooks  # the masking hook is gone after the block
    assert torch.equal(clean, again) and not torch.allclose(clean, masked)
    frames = encoder.output_lengths(lengths)
    zero_frames = (seen[0].abs().sum(-1) > 0) & (seen[1].abs().sum(-1) == 0)  # (B, T) masked in time
    for i, n in enumerate(frames.tolist()):
        share = zero_frames[i, :n].float().mean().item()
        assert 0.15 < share < 0.8, share  # spans of 10 frames starting at ~50 % of frames, overlapping


@pytest.mark.parametrize("preset", ["wav2vec2_tiny", "sylber_tiny"])
def test_frame_masking_reaches_every_encoder_kind(preset):
    config = CTCTrainConfig(out_dir="-", manifest="-", encoder_preset=preset, mask_time_prob=0.5)
    encoder = build_start_encoder(config).eval()
    wav, lengths = torch.randn(1, 16000) * 0.1, torch.tensor([16000])
    with torch.no_grad():
        clean = encoder(wav, lengths).features
        with frame_masking(encoder, lengths, config, torch.Generator().manual_seed(0)):
            masked = encoder(wav, lengths).features
    assert masked.shape == clean.shape and not torch.allclose(clean, masked)


def test_usable_utterances_drops_texts_ctc_cannot_align():
    from spokenlm.compress import CharVocab
    from spokenlm.train.data import Utterance

    encoder = build_start_encoder(
        CTCTrainConfig(out_dir="-", manifest="-", encoder_preset="dinosr_tiny", encoder_overrides=TINY)
    )
    utts = [
        Utterance(id="ok", split="dev", audio=Path("-"), duration_s=1.0, labels={"text": "hello there"}),
        Utterance(id="empty", split="dev", audio=Path("-"), duration_s=1.0, labels={"text": "123 !"}),
        Utterance(id="fast", split="dev", audio=Path("-"), duration_s=0.5, labels={"text": "a" * 30}),
    ]  # 0.5 s is 24 frames; 30 a's need 59 (29 blanks between the repeats)
    keep, dropped = usable_utterances(utts, encoder, CharVocab())
    assert [u.id for u in keep] == ["ok"] and dropped == 2
    with pytest.raises(ValueError, match=r"^utterance x has the asr task but no task_labels\['text'\]$"):
        usable_utterances([replace(utts[0], id="x", labels={})], encoder, CharVocab())


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"encoder_preset": None}, "ctc needs exactly one of encoder_dir, encoder_preset and encoder_base, got none"),
        ({"encoder_dir": "runs/x"},
         "ctc needs exactly one of encoder_dir, encoder_preset and encoder_base, got encoder_dir and encoder_preset"),
        ({"encoder_preset": "dinosr_huge"}, "unknown encoder_preset 'dinosr_huge'; expected one of dinosr_tiny, "
         "dinosr_tiny_conformer, "
         "dinosr_base, wav2vec2_tiny, wav2vec2_base, sylber_tiny, sylber_base"),
        ({"encoder_overrides": {"width": 3}}, "unknown encoder_overrides for DinoSREncoderConfig: width"),
        ({"encoder_overrides": {"model_dim": 65}}, "model_dim 65 is not divisible by 4 attention heads"),
        ({"mode": "stack"}, "mode must be 'blank_removal' or 'frame_averaging', got 'stack'"),
        ({"train_splits": ()}, "train_splits must name at least one split"),
        ({"max_batch_s": 0.0}, "max_duration_s and max_batch_s must be > 0, got 20.0, 0.0"),
        ({"freeze_encoder_steps": -1}, "freeze_encoder_steps must be >= 0, got -1"),
        ({"encoder_lr_ratio": 0.0}, "encoder_lr_ratio must be > 0, got 0.0"),
        ({"mask_time_prob": 1.0}, "mask_time_prob must be in [0, 1), got 1.0"),
        ({"mask_channel_length": 0}, "mask_channel_length must be >= 1, got 0"),
        ({"eval_every": 0}, "eval_every must be >= 1, got 0"),
        ({"optim": OptimConfig(lr=0.0)}, "optim.lr must be a positive number, got 0.0"),
    ],
)
def test_bad_configs_fail_with_named_values(changes, message):
    config = replace(CTCTrainConfig(out_dir="-", manifest="-", encoder_preset="dinosr_tiny"), **changes)
    with pytest.raises(ValueError) as err:
        config.validate()
    assert str(err.value) == message


def test_config_file_errors(tmp_path, trained):
    from spokenlm.train.config import load_config

    path = tmp_path / "ctc.yaml"
    path.write_text("out_dir: x\nmanifest: m.jsonl\nencoder_preset: dinosr_tiny\nlearning_rate: 1\n")
    with pytest.raises(ValueError, match=r"unknown field\(s\) for CTCTrainConfig: learning_rate$"):
        load_config(path, CTCTrainConfig)
    missing = CTCTrainConfig(out_dir=str(tmp_path / "o"), manifest=str(tmp_path / "none.jsonl"),
                             encoder_preset="dinosr_tiny", encoder_overrides=TINY)  # fmt: skip
    with pytest.raises(FileNotFoundError, match="manifest not found"):
        train(missing)
    # overrides on a saved encoder may change dropout, not shapes
    saved = str(Path(trained[0].out_dir) / "encoder")
    ok = CTCTrainConfig(out_dir="-", manifest="-", encoder_dir=saved, encoder_overrides={"dropout": 0.1})
    assert build_start_encoder(ok).config.dropout == 0.1
    bad = replace(ok, encoder_overrides={"ffn_dim": 256})
    with pytest.raises(ValueError, match=r"^encoder_overrides \(ffn_dim\) change the weights of .*encoder: "):
        build_start_encoder(bad)


def test_the_shipped_configs_parse():
    from spokenlm.train.config import load_config

    root = Path(__file__).resolve().parents[2] / "configs"
    default = load_config(root / "ctc.yaml", CTCTrainConfig)
    dinosr = load_config(root / "ctc_dinosr.yaml", CTCTrainConfig)
    scratch = load_config(root / "ctc_scratch.yaml", CTCTrainConfig)
    default.validate()
    assert default.repeat == {"../corpus-fsdd/manifest.jsonl": 10} and default.init_from is None
    assert default.optim.max_steps == 750 and not default.optim.lr_over_minutes and not default.optim.max_minutes  # steps, not minutes
    assert default.encoder_base == "whisper-tiny.en" and default.freeze_encoder and default.compressor_layers == 2
    assert default.mode == "frame_averaging" and default.out_dir == "runs/ctc"
    assert dinosr.encoder_dir == "runs/encoder-ssl/encoder" and dinosr.optim.max_minutes == 60
    assert scratch.encoder_preset == "dinosr_tiny_conformer" and scratch.encoder_dir is None

    from spokenlm.recipes.ctc_lm import CTCLMConfig

    lm = load_config(root / "ctc_lm.yaml", CTCLMConfig)
    lm.validate()
    assert lm.compressor_dir == default.out_dir + "/compressor" and lm.encoder_base == default.encoder_base

    from spokenlm.recipes.transcriber import TranscriberRecipeConfig

    picker = load_config(root / "transcriber.yaml", TranscriberRecipeConfig)
    picker.validate()
    assert picker.compressor_dir == lm.out_dir + "/compressor" and picker.transcriber.base == "whisper-tiny.en"
    assert lm.encoder_overrides == {"bf16": True} and lm.train_split == "fine-tune" and lm.dev_split == "dev"


@pytest.mark.slow
def test_ctc_runs_under_ray_train_with_two_workers(tiny_corpus, tmp_path):
    import yaml

    from spokenlm.cli import main

    config = tmp_path / "ctc.yaml"
    config.write_text(yaml.safe_dump({
        "out_dir": str(tmp_path / "out"), "manifest": str(tiny_corpus), "encoder_preset": "dinosr_tiny",
        "encoder_overrides": TINY, "dev_split": "fine-tune", "max_batch_s": 10.0, "eval_every": 10,
        "eval_max_utts": 6, "freeze_encoder_steps": 5, "mask_time_prob": 0.1,
        "optim": {"lr": 3e-3, "warmup_steps": 5, "max_steps": 20},
    }))  # fmt: skip
    assert main(["train", "ctc", "--config", str(config), "--workers", "2"]) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["workers"] == 2 and metrics["steps"] == 20
    assert metrics["dev_loss"] < metrics["dev_loss_start"]
    assert (tmp_path / "out" / "encoder" / "model.safetensors").is_file()
    assert (tmp_path / "out" / "compressor" / "model.safetensors").is_file()


# --- a frozen encoder read from the feature cache (the Whisper path of the default bundle) ------


@pytest.fixture(scope="module")
def frozen_whisper_run(tiny_corpus, tmp_path_factory):
    from spokenlm.encoders.whisper import build_whisper_encoder, save_whisper_encoder, whisper_test

    root = tmp_path_factory.mktemp("ctc-frozen")
    torch.manual_seed(0)
    encoder = build_whisper_encoder(replace(whisper_test(), arch=whisper_test().arch | {"d_model": 32}))
    save_whisper_encoder(encoder, root / "whisper")
    config = _config(
        root / "out", tiny_corpus, encoder_preset=None, encoder_overrides={}, encoder_dir=str(root / "whisper"),
        freeze_encoder=True, feature_cache=str(root / "features"), compressor_layers=1, compressor_heads=2,
        compressor_dropout=0.0, mask_time_prob=0.1, mask_channel_prob=0.05, mode="blank_removal",
        optim=OptimConfig(lr=3e-3, warmup_steps=10, max_steps=120),
    )  # fmt: skip
    return config, train(config), root


def test_frozen_encoder_trains_the_compressor_over_cached_features(frozen_whisper_run):
    from spokenlm.compress import load_compressor
    from spokenlm.encoders import load_encoder

    config, summary, root = frozen_whisper_run
    out = Path(config.out_dir)
    assert summary["encoder_frozen"] and summary["steps"] == 120
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses[-1] < 0.5 * losses[0]
    assert summary["dev_loss"] < 0.5 * summary["dev_loss_start"]
    assert not (out / "encoder").exists()  # the bundle references the frozen encoder instead
    compressor = load_compressor(out / "compressor")
    assert compressor.config.num_layers == 1 and compressor.context is not None
    shards = sorted((root / "features").glob("*/shard-*.safetensors"))
    assert shards and len(shards) <= 22  # one file per id-hash shard that holds an utterance
    # the encoder itself did not move
    saved, start = load_encoder(root / "whisper"), build_start_encoder(config)
    for (k, a), (_, b) in zip(saved.state_dict().items(), start.state_dict().items()):
        assert torch.equal(a, b), k


def test_frozen_encoder_resume_reuses_the_cache(frozen_whisper_run):
    config, _, root = frozen_whisper_run
    shards = sorted((root / "features").glob("*/shard-*.safetensors"))
    stamps = [p.stat().st_mtime_ns for p in shards]
    summary = train(replace(config, optim=replace(config.optim, max_steps=130)))
    assert summary["steps"] == 130
    assert [p.stat().st_mtime_ns for p in shards] == stamps  # nothing re-encoded


def test_encoder_source_errors(tiny_corpus, tmp_path):
    with pytest.raises(ValueError, match=r"exactly one of encoder_dir, encoder_preset and encoder_base, got encoder_preset and encoder_base"):
        _config(tmp_path, tiny_corpus, encoder_base="whisper-tiny.en").validate()
    with pytest.raises(ValueError, match=r"unknown encoder_base 'whisper-huge'; expected one of whisper-tiny.en"):
        _config(tmp_path, tiny_corpus, encoder_preset=None, encoder_base="whisper-huge").validate()
    with pytest.raises(ValueError, match=r"freeze_encoder already keeps the encoder frozen; set freeze_encoder_steps to 0"):
        _config(tmp_path, tiny_corpus, freeze_encoder=True, freeze_encoder_steps=5).validate()


def test_init_from_continues_a_compressor_and_repeat_weights_a_manifest(frozen_whisper_run, tiny_corpus, tmp_path):
    config, summary, root = frozen_whisper_run
    # a second corpus: the first four fine-tune clips again, under other ids, at absolute paths
    rows = [json.loads(line) for line in tiny_corpus.read_text().splitlines()]
    extra = [r | {"id": "b-" + r["id"], "audio": str(tiny_corpus.parent / r["audio"])}
             for r in rows if r["split"] == "fine-tune"][:4]  # fmt: skip
    second = tmp_path / "second.jsonl"
    second.write_text("".join(json.dumps(r) + "\n" for r in extra))
    trained_compressor = str(Path(config.out_dir) / "compressor")
    continued = replace(
        config, out_dir=str(tmp_path / "out"), manifest=(str(tiny_corpus), str(second)), repeat={str(second): 3},
        init_from=trained_compressor, optim=replace(config.optim, max_steps=2),
    )  # fmt: skip
    result = train(continued)
    assert result["train_utterances"] == 24 and result["train_utterances_repeated"] == 20 + 3 * 4
    # the step-0 dev loss is the trained head's, not a fresh one's
    assert result["dev_loss_start"] == pytest.approx(summary["dev_loss"], rel=0.02)
    assert result["dev_loss_start"] < 0.5 * summary["dev_loss_start"]

    with pytest.raises(ValueError, match=r"^init_from .*compressor: its num_layers is 1, this run's is 2$"):
        train(replace(continued, out_dir=str(tmp_path / "bad"), compressor_layers=2))
    with pytest.raises(ValueError, match=r"^repeat names 'x.jsonl', which is not one of the manifests \["):
        replace(continued, repeat={"x.jsonl": 2}).validate()
    with pytest.raises(ValueError, match=r"^repeat\[.*second.jsonl'\] must be an integer >= 1, got 0$"):
        replace(continued, repeat={str(second): 0}).validate()


def test_transcriber_recipe_picks_the_weights_with_the_lowest_dev_wer(trained, tiny_corpus, tiny_whisper, tmp_path):
    from spokenlm.recipes.transcriber import TranscriberRecipeConfig
    from spokenlm.recipes.transcriber import train as pick
    from spokenlm.transcriber import TranscriberConfig, read_transcriber_config

    from spokenlm.compress import load_compressor, save_compressor
    from spokenlm.compress.beam import CTCBeamConfig, SentenceLM
    from spokenlm.ngram import fit_ngram

    config, _ = trained
    # the trained compressor with a word LM of the corpus's text, as the ctc-lm recipe writes one
    plain = load_compressor(config.out_dir + "/compressor")
    with_lm = type(plain)(replace(plain.config, beam=CTCBeamConfig(lm_file="lm.arpa")))
    with_lm.load_state_dict(plain.state_dict())
    rows = [json.loads(line) for line in Path(tiny_corpus).read_text().splitlines()]
    with_lm.attach_lm(fit_ngram([r["task_labels"]["text"] for r in rows if r["task_labels"].get("text")], 2).write_arpa(tmp_path / "lm.arpa"))
    save_compressor(with_lm, tmp_path / "compressor")
    whisper = TranscriberConfig(base=None, path=str(tiny_whisper["ct2_int8"]), cpu_threads=1, max_tokens_per_second=1000.0)
    recipe = TranscriberRecipeConfig(
        out_dir=str(tmp_path / "out"), manifest=str(tiny_corpus), compressor_dir=str(tmp_path / "compressor"),
        encoder_dir=config.out_dir + "/encoder", transcriber=whisper, ctc_weights=(0.0, 0.5, 1.0),
        length_bonuses=(-100.0, 0.0, 100.0), lm_weights=(0.0, 1.0), dev_split="fine-tune", dev_utterances=6,
        skip_fractions=(0.0, 0.5, 0.9), max_wer_rise=0.99,
    )  # fmt: skip
    metrics = pick(recipe)
    grid = [r for r in metrics["rows"] if "ctc_weight" in r]
    assert metrics["dev_utterances"] == {str(tiny_corpus): 6} and len(grid) == 18
    best = min(grid, key=lambda r: r["mean"])  # the first of equals, as the recipe keeps
    assert (metrics["ctc_weight"], metrics["length_bonus"], metrics["lm_weight"], metrics["dev_wer_ungated"]) == (
        best["ctc_weight"], best["length_bonus"], best["lm_weight"], best["mean"])  # fmt: skip
    # the gate: a row per share above 0; max_wer_rise 0.99 lets the largest share through
    gates = [r for r in metrics["rows"] if "skip" in r]
    assert [g["skip"] for g in gates] == [0.5, 0.9] and all(g["skipped"] >= g["skip"] for g in gates)
    assert gates[0]["confident_ctc"] >= gates[1]["confident_ctc"]  # skipping more takes a lower bar
    assert (metrics["confident_ctc"], metrics["dev_wer"], metrics["dev_skipped"]) == (
        gates[1]["confident_ctc"], gates[1]["mean"], gates[1]["skipped"])  # fmt: skip
    # every chunk's readings, scored by the LM too: a rule can be fitted again without decoding
    lm = SentenceLM(tmp_path / "compressor" / "lm.arpa")
    dumped = [json.loads(line) for line in (tmp_path / "out" / "readings.jsonl").read_text().splitlines()]
    assert len(dumped) == 6 and all(len(d["chunks"]) == 1 for d in dumped)
    for chunk in (d["chunks"][0] for d in dumped):
        assert chunk["ctc_scores"]["lm"] == pytest.approx(lm.log10_prob(chunk["ctc"]) * math.log(10), abs=1e-4)
        assert chunk["whisper_scores"]["lm"] == pytest.approx(lm.log10_prob(chunk["whisper"]) * math.log(10), abs=1e-4)
    assert all(0.0 <= r["whisper_share"] <= 1.0 for r in grid)
    # every rule takes one of the two readings per recording: never better than the oracle
    assert metrics["dev_wer_oracle"] <= min(r["mean"] for r in metrics["rows"])
    written = read_transcriber_config(recipe.out_dir)
    assert written == replace(whisper, ctc_weight=metrics["ctc_weight"], length_bonus=metrics["length_bonus"],
                              lm_weight=metrics["lm_weight"], confident_ctc=metrics["confident_ctc"])  # fmt: skip
    # the gated rows, again from the dumped readings: the surest chunks take the CTC reading
    from spokenlm.transcriber import ctc_confidence

    chunks = [_chunk_readings(d["chunks"][0]) for d in dumped]
    sure = [ctc_confidence(c.ctc_scores, c.duration_s, written) >= written.confident_ctc for c in chunks]
    assert sum(sure) / len(sure) == metrics["dev_skipped"]
    import jiwer

    again = [c.ctc if s else c.choose(written) for c, s in zip(chunks, sure)]
    assert jiwer.wer([d["ref"] for d in dumped], again) == pytest.approx(metrics["dev_wer"])
    with pytest.raises(ValueError, match=r"^lm_weights \[0.0, 1.0\]: the compressor in .* has no word LM$"):
        pick(replace(recipe, compressor_dir=config.out_dir + "/compressor"))
    with pytest.raises(ValueError, match="exactly one of encoder_base and encoder_dir"):
        replace(recipe, encoder_base="whisper-tiny.en").validate()
    with pytest.raises(ValueError, match=r"^ctc_weight must be a number in \[0, 1\], got 2.0$"):
        replace(recipe, ctc_weights=(0.5, 2.0)).validate()
    with pytest.raises(ValueError, match=r"^max_duration_s must be within \[1, 30\]"):
        replace(recipe, max_duration_s=60.0).validate()
    with pytest.raises(ValueError, match=r"^skip_fractions must be numbers in \[0, 1\), at least one, got \[0.5, 1.0\]$"):
        replace(recipe, skip_fractions=(0.5, 1.0)).validate()
    with pytest.raises(ValueError, match=r"^max_wer_rise must be a number in \[0, 1\), got -0.1$"):
        replace(recipe, max_wer_rise=-0.1).validate()
    with pytest.raises(ValueError, match=r"^transcriber.confident_ctc is what the recipe picks"):
        replace(recipe, transcriber=replace(whisper, confident_ctc=-5.0)).validate()
    with pytest.raises(ValueError, match=r"^beam_sizes must be ints in \[1, 16\], got \[1, 0\]$"):
        replace(recipe, beam_sizes=(1, 0)).validate()


def _chunk_readings(record: dict):
    """A ChunkReadings back from readings.jsonl."""
    from spokenlm.transcriber import Alternative, ChunkReadings, Scores

    others = tuple(Alternative(a["text"], Scores(**a["scores"]), a["rank"]) for a in record["others"])
    return ChunkReadings(**{**record, "whisper_scores": Scores(**record["whisper_scores"]),
                            "ctc_scores": Scores(**record["ctc_scores"]), "others": others})  # fmt: skip


def test_transcriber_recipe_picks_whispers_beam_with_the_rule(trained, tiny_corpus, tiny_whisper, tmp_path):
    from spokenlm.recipes.transcriber import TranscriberRecipeConfig
    from spokenlm.recipes.transcriber import train as pick
    from spokenlm.transcriber import TranscriberConfig, read_transcriber_config

    config, _ = trained
    whisper = TranscriberConfig(base=None, path=str(tiny_whisper["ct2_int8"]), cpu_threads=1, max_tokens_per_second=1000.0)
    recipe = TranscriberRecipeConfig(
        out_dir=str(tmp_path / "out"), manifest=str(tiny_corpus), compressor_dir=config.out_dir + "/compressor",
        encoder_dir=config.out_dir + "/encoder", transcriber=whisper, ctc_weights=(0.0, 1.0), length_bonuses=(0.0,),
        dev_split="fine-tune", dev_utterances=4, beam_sizes=(1, 3), num_hypotheses=(1, 3),
    )  # fmt: skip
    metrics = pick(recipe)
    grid = [r for r in metrics["rows"] if "ctc_weight" in r]
    assert [(r["beam_size"], r["num_hypotheses"], r["ctc_weight"]) for r in grid] == [
        (1, 1, 0.0), (1, 1, 1.0), (3, 1, 0.0), (3, 1, 1.0), (3, 3, 0.0), (3, 3, 1.0)]  # fmt: skip
    best = min(grid, key=lambda r: r["mean"])  # the first of equals
    assert (metrics["beam_size"], metrics["num_hypotheses"], metrics["ctc_weight"], metrics["dev_wer_ungated"]) == (
        best["beam_size"], best["num_hypotheses"], best["ctc_weight"], best["mean"])  # fmt: skip
    # Whisper's reading alone, per beam
    assert [r["beam_size"] for r in metrics["rows"] if r["setting"].startswith("whisper, beam")] == [1, 3]
    written = read_transcriber_config(recipe.out_dir)
    assert (written.beam_size, written.num_hypotheses) == (best["beam_size"], best["num_hypotheses"])
    assert metrics["dev_wer_oracle"] <= min(r["mean"] for r in grid)
    # a beam of 3 alone: its readings are dumped with the beam's further ones, and the rule's choices come back from them
    import jiwer

    wide = replace(recipe, out_dir=str(tmp_path / "wide"), beam_sizes=(3,), num_hypotheses=(3,))
    metrics = pick(wide)
    written = read_transcriber_config(wide.out_dir)
    assert (written.beam_size, written.num_hypotheses) == (3, 3)
    dumped = [json.loads(line) for line in (tmp_path / "wide" / "readings.jsonl").read_text().splitlines()]
    chunks = [_chunk_readings(d["chunks"][0]) for d in dumped]
    assert any(c.others for c in chunks) and all(1 <= a.rank < 3 for c in chunks for a in c.others)
    assert jiwer.wer([d["ref"] for d in dumped], [c.choose(written) for c in chunks]) == pytest.approx(metrics["dev_wer_ungated"])
    with pytest.raises(ValueError, match=r"^num_hypotheses \[4\]: none fits a beam of \[1, 3\]$"):
        replace(recipe, num_hypotheses=(4,)).validate()
    with pytest.raises(ValueError, match=r"^num_hypotheses must be ints in \[1, 16\], got \[1, 0\]$"):
        replace(recipe, num_hypotheses=(1, 0)).validate()


def test_the_gate_rows_skip_the_surest_chunks_and_never_a_hopeless_one():
    from spokenlm.recipes.transcriber import gate_rows
    from spokenlm.transcriber import ChunkReadings, Scores, TranscriberConfig

    def chunk(ctc_ll, text):  # Whisper read "x"; the CTC head `text`, with log-likelihood `ctc_ll` over 1 s
        return [ChunkReadings(whisper="x", ctc=text, whisper_scores=Scores(-1.0, -1.0), ctc_scores=Scores(ctc_ll, -9.0),
                              whisper_tokens=1, whisper_logprob=-0.1, duration_s=1.0)]  # fmt: skip

    readings = {"m": [chunk(-1.0, "a"), chunk(-5.0, "b"), chunk(-20.0, "c"), chunk(-math.inf, "d")]}
    taken = []

    def wers(pick):
        taken.append([pick("", c[0]) for c in readings["m"]])
        return {"mean": 0.0}

    rows = gate_rows(readings, TranscriberConfig(), [0.0, 0.5, 0.99], wers)
    assert [(r["skip"], r["confident_ctc"], r["skipped"]) for r in rows] == [(0.5, -5.0, 0.5), (0.99, -1000.0, 0.75)]
    assert taken == [["a", "b", "x", "x"], ["a", "b", "c", "x"]]  # the surest take the CTC reading; -inf never


def test_transcriber_recipe_names_an_unknown_encoder_base():
    from spokenlm.recipes.transcriber import TranscriberRecipeConfig

    config = TranscriberRecipeConfig(out_dir="-", manifest="-", compressor_dir="-", encoder_base="whisper-huge")
    with pytest.raises(ValueError, match=r"^unknown encoder_base 'whisper-huge'; expected one of whisper-tiny.en"):
        config.validate()


def test_the_gzipped_lm_is_the_same_bytes_whenever_it_is_written(tmp_path):
    """The token cache keys on the LM file's bytes: a rerun of ctc-lm must not change them."""
    import gzip
    import time

    from spokenlm.recipes.ctc_lm import _write_gzipped_arpa

    class _LM:
        def write_arpa(self, path):
            Path(path).write_text("\\data\\\nngram 1=1\n\n\\1-grams:\n-1.0\thello\n\n\\end\\\n")

    (tmp_path / "a").mkdir()
    first = _write_gzipped_arpa(_LM(), tmp_path / "a" / "lm.arpa.gz")
    written = first.read_bytes()
    time.sleep(1.1)  # a gzip header with a time in it would now differ
    again = _write_gzipped_arpa(_LM(), first)
    assert again.read_bytes() == written and gzip.decompress(written).startswith(b"\\data\\")
    assert not (tmp_path / "a" / "lm.arpa").exists()  # the plain ARPA is not left behind
