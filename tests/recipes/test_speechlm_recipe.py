"""The speechlm recipe on the tiny espeak corpus, with tiny frozen parts built here: a wav2vec 2.0
encoder and CTC compressor (random, saved as the ctc recipe saves them) and a 2-layer Llama with its
BPE tokenizer (saved as the text-lm recipe saves it)."""

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from spokenlm.recipes.text_lm import block_loss, pack
from spokenlm.recipes.speechlm import (
    Item,
    SpeechLMTrainConfig,
    bucketed_batches,
    headline,
    items_of,
    qa_scores,
    score_task,
    train,
)
from spokenlm.tasks import TaskRequest, parse_output
from spokenlm.train.data import Utterance
from spokenlm.train.loop import OptimConfig

TINY_ARCH = {
    "model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
    "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 512, "tie_word_embeddings": True,
}  # fmt: skip
PRETRAIN_STEPS = 150


@pytest.fixture(scope="module")
def frozen_parts(tmp_path_factory, tiny_corpus) -> dict[str, Path]:
    from spokenlm.compress import CTCCompressorConfig, build_compressor, save_compressor
    from spokenlm.encoders import build_encoder, save_encoder
    from spokenlm.encoders.wav2vec2 import wav2vec2_tiny
    from spokenlm.lm import build_llm, save_llm
    from spokenlm.tokenizer import train_bpe_tokenizer

    root = tmp_path_factory.mktemp("frozen")
    torch.manual_seed(0)
    encoder = build_encoder(wav2vec2_tiny())
    save_encoder(encoder, root / "ctc" / "encoder")
    save_compressor(build_compressor(CTCCompressorConfig(input_dim=64)), root / "ctc" / "compressor")
    texts = [json.loads(line)["task_labels"]["text"] for line in tiny_corpus.read_text().splitlines()]
    texts += ["transcribe the speech", "what is the sentiment of the speech", "negative neutral positive"]
    tokenizer = train_bpe_tokenizer(texts * 3, vocab_size=320)
    llm = build_llm({**TINY_ARCH, "vocab_size": len(tokenizer)}, tokenizer)
    # A frozen random LLM cannot learn through LoRA (its tiny embeddings bound every logit): pretrain
    # it on the targets for a moment, as the text-lm recipe does at scale.
    targets = texts + ["Negative", "Neutral", "Positive"] * 4
    blocks = pack(tokenizer(targets, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id, seq_len=32)
    optimizer = torch.optim.AdamW(llm.model.parameters(), lr=1e-2)
    llm.model.train()
    for step in range(PRETRAIN_STEPS):
        block_loss(llm.model, blocks[torch.randint(len(blocks), (8,))]).backward()
        optimizer.step()
        optimizer.zero_grad()
    save_llm(llm, root / "text-lm" / "llm")
    return {"encoder": root / "ctc" / "encoder", "compressor": root / "ctc" / "compressor",
            "llm": root / "text-lm" / "llm"}  # fmt: skip


def _config(out: Path, manifest: Path, parts: dict[str, Path], **changes) -> SpeechLMTrainConfig:
    config = SpeechLMTrainConfig(
        out_dir=str(out),
        manifest=str(manifest),
        encoder_dir=str(parts["encoder"]),
        compressor_dir=str(parts["compressor"]),
        llm_dir=str(parts["llm"]),
        feature_cache=str(out.parent / "features"),
        token_cache=str(out.parent / "tokens"),
        lora_rank=4,
        lora_alpha=8,
        adapter_hidden_dim=64,
        batch_size=8,
        log_every=5,
        eval_every=20,
        eval_batch_size=8,
        max_new_tokens=16,
        optim=OptimConfig(lr=3e-3, warmup_steps=5, max_steps=40),
    )
    return dataclasses.replace(config, **changes)


def _llm_weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "model.safetensors"))


def test_lora_run_learns_keeps_the_llm_frozen_resumes_and_ships_a_bundle(
    tmp_path, tiny_corpus, frozen_parts, capsys, monkeypatch
):
    out = tmp_path / "speechlm"
    first = train(_config(out, tiny_corpus, frozen_parts))
    assert first["steps"] == 40 and first["mode"] == "lora" and first["tasks"] == ["asr", "sentiment"]
    losses = [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert len(losses) == 8 and losses[-1] < losses[0] - 1.0  # learned something in 40 steps

    # LoRA mode: the base LLM is bit-identical to its input; the LoRA and adapter weights moved
    base, trained = _llm_weights(frozen_parts["llm"]), _llm_weights(out / "bundle" / "llm")
    assert base.keys() == trained.keys()
    assert all(torch.equal(base[k], trained[k]) for k in base)
    lora = load_file(str(out / "bundle" / "lora" / "adapter_model.safetensors"))
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in lora.items())  # B starts at zero

    # the encoder ran once per utterance and the compressor once; a resumed run reads the features'
    # tokens back and neither encodes nor compresses
    shards = sorted((tmp_path / "features").rglob("shard-*.safetensors"))
    assert shards and sum(len(load_file(str(s))) for s in shards) == 22  # one chunk per clip
    token_shards = sorted((tmp_path / "tokens").rglob("shard-*.safetensors"))
    assert token_shards and sum(len(load_file(str(s))) for s in token_shards) == 22  # one entry per clip
    from spokenlm.recipes import speechlm as recipe
    from spokenlm.train.features import FeatureCache

    monkeypatch.setattr(FeatureCache, "_encode", lambda *a, **k: pytest.fail("re-encoded a cached utterance"))
    monkeypatch.setattr(recipe, "speech_tokens", lambda *a, **k: pytest.fail("re-compressed a cached utterance"))
    resumed = train(_config(out, tiny_corpus, frozen_parts, optim=OptimConfig(lr=3e-3, warmup_steps=5, max_steps=50)))
    monkeypatch.undo()
    assert resumed["steps"] == 50
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert sum(1 for r in rows if r["step"] == 0) == 1  # the baseline is measured once, not on resume
    assert [r["step"] for r in rows if "loss" in r] == list(range(5, 55, 5))

    # outputs: metrics, curve, eval file with the SLUE metric keys, a trained bundle the CLI runs
    for name in ("metrics.json", "loss.png", "eval_dev.json", "config.yaml", "bundle/spokenlm.json"):
        assert (out / name).is_file(), name
    evaluation = json.loads((out / "eval_dev.json").read_text())
    assert evaluation["split"] == "dev" and evaluation["step"] == 50
    assert {"asr_wer", "sentiment_macro_f1", "sentiment_accuracy", "score"} <= set(evaluation["metrics"])
    assert evaluation["tasks"]["asr"]["items"] == 2 and len(evaluation["examples"]["sentiment"]) == 2
    assert resumed["dev_asr_wer"] == evaluation["metrics"]["asr_wer"]

    from spokenlm.cli import main
    from spokenlm.model import load_bundle

    model = load_bundle(out / "bundle")
    assert model.info.trained and model.info.tasks == ("asr", "sentiment")
    provenance = model.info.provenance
    assert provenance["recipe"] == "speechlm" and provenance["data"]["fine-tune"]["utterances"] == 20
    assert provenance["metrics"]["dev_asr_wer"] == evaluation["metrics"]["asr_wer"]
    assert model.llm.has_lora
    clip = tiny_corpus.parent / "audio" / "u20.wav"
    capsys.readouterr()
    argv = ["run", "--model", str(out / "bundle"), "--task", "sentiment", "--json", "--max-new-tokens", "4"]
    assert main([*argv, str(clip)]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["task"] == "sentiment" and record["path"] == str(clip)


def test_full_fine_tuning_changes_the_llm_weights(tmp_path, tiny_corpus, frozen_parts):
    out = tmp_path / "full"
    summary = train(_config(out, tiny_corpus, frozen_parts, mode="full", llm_lr_scale=0.5, eval_every=100,
                            optim=OptimConfig(lr=3e-3, warmup_steps=2, max_steps=10)))  # fmt: skip
    assert summary["steps"] == 10 and summary["trainable_parameters"] > summary["llm_parameters"]
    base, trained = _llm_weights(frozen_parts["llm"]), _llm_weights(out / "bundle" / "llm")
    changed = [k for k in base if not torch.equal(base[k], trained[k])]
    assert len(changed) == len(base)  # every LLM tensor trained
    assert not (out / "bundle" / "lora").exists()


def test_task_weights_choose_the_tasks_and_bad_configs_are_named(tmp_path, tiny_corpus, frozen_parts):
    out = tmp_path / "asr-only"
    summary = train(_config(out, tiny_corpus, frozen_parts, task_weights={"sentiment": 0}, eval_every=100,
                            optim=OptimConfig(lr=3e-3, warmup_steps=1, max_steps=2)))  # fmt: skip
    assert summary["tasks"] == ["asr"]
    # only what the run trains is scored: the final evaluation (and any dev sample) leaves sentiment out
    assert set(json.loads((out / "eval_dev.json").read_text())["tasks"]) == {"asr"}

    with pytest.raises(ValueError, match=re.escape("task_weights names unknown task(s) ['asrr']")):
        _config(out, tiny_corpus, frozen_parts, task_weights={"asrr": 1.0}).validate()
    with pytest.raises(ValueError, match=re.escape("mode must be one of ('lora', 'full'), got 'qlora'")):
        _config(out, tiny_corpus, frozen_parts, mode="qlora").validate()
    with pytest.raises(ValueError, match="lora mode needs lora_rank >= 1"):
        _config(out, tiny_corpus, frozen_parts, lora_rank=0).validate()
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match=re.escape(f"encoder_dir {missing} is not a directory")):
        train(_config(out, tiny_corpus, {**frozen_parts, "encoder": missing}))
    with pytest.raises(ValueError, match=re.escape("speechlm needs exactly one of llm_dir and llm_base, got ['llm_dir', 'llm_base']")):
        _config(out, tiny_corpus, frozen_parts, llm_base="smollm2-135m-instruct").validate()
    with pytest.raises(ValueError, match=re.escape("unknown encoder_base 'wav2vec9'")):
        _config(out, tiny_corpus, frozen_parts, encoder_dir=None, encoder_base="wav2vec9").validate()
    with pytest.raises(ValueError, match="text_warmup_steps needs prompt_transcript"):
        _config(out, tiny_corpus, frozen_parts, text_warmup_steps=5).validate()


def test_compressor_overrides_and_a_stack_compressor_give_the_ablation_arms(tmp_path, tiny_corpus, frozen_parts):
    from spokenlm.compress import StackCompressor, StackCompressorConfig, save_compressor

    short = {"task_weights": {"sentiment": 0}, "eval_every": 100, "optim": OptimConfig(lr=3e-3, warmup_steps=1, max_steps=2)}
    rates = {}
    for name, changes in {"average": {}, "blanks": {"compressor_overrides": {"mode": "blank_removal"}}}.items():
        out = tmp_path / name
        train(_config(out, tiny_corpus, frozen_parts, **short, **changes))
        saved = json.loads((out / "bundle" / "compressor" / "compressor.json").read_text())
        assert saved["mode"] == ("blank_removal" if name == "blanks" else "frame_averaging")
        rates[name] = json.loads((out / "metrics.json").read_text())["data"]["fine-tune"]["speech_tokens_per_second"]
    assert rates["blanks"] >= rates["average"] > 0  # a token per emitting frame, not per run
    stack = tmp_path / "stack2"
    save_compressor(StackCompressor(StackCompressorConfig(input_dim=64, k=2)), stack)
    out = tmp_path / "stack"
    train(_config(out, tiny_corpus, {**frozen_parts, "compressor": stack}, **short, first_eval=False))
    evaluated = {name: [r["step"] for r in map(json.loads, (tmp_path / name / "metrics.jsonl").read_text().splitlines())
                        if "val_loss" in r] for name in ("average", "stack")}  # fmt: skip
    assert evaluated == {"average": [0, 2], "stack": [2]}  # first_eval: the untrained adapter's figures first, or only the final ones
    assert json.loads((out / "bundle" / "compressor" / "compressor.json").read_text()) == {"kind": "stack", "input_dim": 64, "k": 2}
    assert json.loads((out / "metrics.json").read_text())["data"]["fine-tune"]["speech_tokens_per_second"] == pytest.approx(25, rel=0.05)
    with pytest.raises(ValueError, match=r"^unknown compressor_overrides for CTCCompressorConfig: k$"):
        train(_config(tmp_path / "bad", tiny_corpus, frozen_parts, **short, compressor_overrides={"k": 4}))


def test_a_run_checkpoints_between_evaluations_and_a_killed_run_resumes_there(tmp_path, tiny_corpus, frozen_parts,
                                                                             monkeypatch):  # fmt: skip
    import spokenlm.recipes.speechlm as recipe
    from spokenlm.train.loop import Checkpointer

    out = tmp_path / "killed"
    config = _config(out, tiny_corpus, frozen_parts, eval_every=1000, checkpoint_every=10,
                     optim=OptimConfig(lr=3e-3, warmup_steps=5, max_steps=30))  # fmt: skip
    steps: list[int] = []
    real = recipe.clip_and_step

    def killed_at_step_15(*args, **kwargs):
        steps.append(len(steps) + 1)
        if len(steps) == 15:
            raise KeyboardInterrupt  # the run is killed inside step 15
        return real(*args, **kwargs)

    monkeypatch.setattr(recipe, "clip_and_step", killed_at_step_15)
    with pytest.raises(KeyboardInterrupt):
        train(config)
    monkeypatch.undo()
    assert Checkpointer(out).latest().name == "step-10"  # no evaluation yet: the step-10 checkpoint
    resumed = train(config)
    assert resumed["steps"] == 30
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [5, 10, 15, 20, 25, 30]  # 11-14 trained again, logged once
    with pytest.raises(ValueError, match=r"^checkpoint_every must be an int >= 0 \(0: only with each evaluation\), got -1$"):
        dataclasses.replace(config, checkpoint_every=-1).validate()


def test_hybrid_prompt_and_text_warmup(tmp_path, tiny_corpus, frozen_parts, tiny_whisper):
    from spokenlm.model import load_bundle
    from spokenlm.tasks import TRANSCRIPT_HINT

    out = tmp_path / "hybrid"
    picked = {"base": None, "path": str(tiny_whisper["ct2_int8"]), "ctc_weight": 0.3}  # a transcriber recipe's pick
    (tmp_path / "transcriber.json").write_text(json.dumps(picked))
    summary = train(_config(out, tiny_corpus, frozen_parts, prompt_transcript=True, text_warmup_steps=10,
                            eval_every=100, bundle_dtype="bfloat16", transcriber=str(tmp_path / "transcriber.json"),
                            asr_from_transcript=True,
                            optim=OptimConfig(lr=3e-3, warmup_steps=2, max_steps=20)))  # fmt: skip
    assert summary["steps"] == 20
    bundle = load_bundle(out / "bundle")  # the bundle judges Whisper's reading against the CTC one, answers ASR so
    assert bundle.transcriber.config.ctc_weight == 0.3 and bundle.llm.asr_from_transcript
    for name in ("transcriber", "asr_from_transcript"):
        with pytest.raises(ValueError, match=f"^{name} needs prompt_transcript: it is about the prompt's transcript$"):
            _config(out, tiny_corpus, frozen_parts, **{name: "x" if name == "transcriber" else True}).validate()
    from safetensors import safe_open

    with safe_open(str(out / "bundle" / "adapter.safetensors"), framework="pt") as f:  # stored small
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    evaluation = json.loads((out / "eval_dev.json").read_text())
    prompt = evaluation["examples"]["asr"][0]["prompt"]
    assert TRANSCRIPT_HINT in prompt  # the CTC transcript rides in the prompt
    assert "dev_ctc_wer" in summary and summary["dev_ctc_wer"] >= 0  # the CTC stage scored on its own


def test_ctc_like_noise_hits_its_rate():
    import random

    from spokenlm.recipes.speechlm import ctc_like_noise
    from spokenlm.slue.metrics import word_error_rate

    text = "the quick brown fox jumps over the lazy dog " * 40
    assert ctc_like_noise(text, 0.0, random.Random(0)) == " ".join(text.split())
    noisy = ctc_like_noise(text, 0.2, random.Random(0))
    import jiwer

    cer = jiwer.cer(" ".join(text.split()), noisy)
    assert 0.12 < cer < 0.28  # ~20 % character errors (an insertion can land on a deletion)
    assert word_error_rate([text], [noisy]).wer > 30


@pytest.mark.parametrize("name", ["speechlm.yaml", "speechlm_full.yaml", "speechlm_speech_only.yaml"])
def test_shipped_configs_parse(name):
    from spokenlm.train.config import load_config

    config = load_config(Path(__file__).resolve().parents[2] / "configs" / name, SpeechLMTrainConfig)
    assert config.mode == ("full" if "full" in name else "lora") and config.bf16
    if "full" in name:
        assert config.optim.max_minutes == 75 and config.optim.lr_over_minutes
    else:  # the chain's stage and its speech-only ablation: the same budget in steps and task mix
        hybrid = load_config(Path(__file__).resolve().parents[2] / "configs" / "speechlm.yaml", SpeechLMTrainConfig)
        assert config.optim == hybrid.optim and config.optim.max_steps == 350 and not config.optim.lr_over_minutes
        assert config.task_weights == hybrid.task_weights and not config.first_eval
    assert config.bundle_dtype == ("float32" if "full" in name else "bfloat16")  # a LoRA bundle is committed
    assert config.manifest == ("../corpus/manifest.jsonl", "../corpus-fsdd/manifest.jsonl")
    assert config.encoder_base == "whisper-tiny.en" and config.llm_base == "smollm2-135m-instruct"
    assert config.prompt_transcript == ("speech_only" not in name)
    if config.prompt_transcript:  # the transcript read with the ctc-lm stage's word LM, jackknifed in training
        assert config.compressor_dir == "runs/ctc_lm/compressor" and config.train_transcript_lms == "runs/ctc_lm/folds"


def test_the_compressor_ablation_config_parses_and_its_stack_compressor_loads():
    from spokenlm.compress import StackCompressor, load_compressor
    from spokenlm.train.config import load_config

    root = Path(__file__).resolve().parents[2]
    config = load_config(root / "configs" / "ablation_asr.yaml", SpeechLMTrainConfig)
    assert not config.prompt_transcript and not config.first_eval and config.final_items_per_task == 200
    assert config.optim.max_steps == 1000 and config.optim.max_minutes == 0 and not config.optim.lr_over_minutes
    assert {t for t, w in config.task_weights.items() if w > 0} == {"asr"}
    stack = load_compressor(root / "configs" / "compressors" / "stack4")
    assert isinstance(stack, StackCompressor) and stack.config.k == 4 and stack.output_dim == 4 * 384


def test_items_follow_the_labels():
    labels = {"text": "anna lives in paris", "qa": [{"question": "who?", "answer": "anna"},
              {"question": "where?", "answer": "paris"}], "translation": "anna vive en parís"}  # fmt: skip
    utt = Utterance(id="x", split="fine-tune", audio=Path("x.wav"), duration_s=1.0, labels=labels, tasks=("asr", "qa"))
    qa = items_of(utt, "qa")
    assert [(i.request.question, i.target) for i in qa] == [("who?", "anna"), ("where?", "paris")]
    (translate,) = items_of(utt, "translate")
    assert translate.request.target_lang == "es" and translate.target == "anna vive en parís"
    with pytest.raises(ValueError, match=re.escape("utterance x: task 'sentiment' needs the label 'sentiment'")):
        items_of(utt, "sentiment")


def test_bucketed_batches_keep_every_item_and_group_similar_lengths():
    import random

    rng = random.Random(0)
    durations = [rng.uniform(0.5, 60.0) for _ in range(16 * 8)]
    items = [Item(Utterance(id=f"u{k}", split="fine-tune", audio=Path("x.wav"), duration_s=d, labels={}),
                  TaskRequest(task="asr"), {}) for k, d in enumerate(durations)]  # fmt: skip
    batches = bucketed_batches(items, 16, random.Random(1))
    assert [len(b) for b in batches] == [16] * 8
    assert sorted(i.utt.id for b in batches for i in b) == sorted(i.utt.id for i in items)
    spans = sorted((min(i.utt.duration_s for i in b), max(i.utt.duration_s for i in b)) for b in batches)
    assert all(hi <= next_lo for (_, hi), (next_lo, _) in zip(spans, spans[1:]))  # buckets do not overlap
    # padded cost (items x longest): well under that of the same items batched in drawn order
    cost = lambda bs: sum(len(b) * max(i.utt.duration_s for i in b) for b in bs)  # noqa: E731
    assert cost(batches) < 0.7 * cost([items[k : k + 16] for k in range(0, len(items), 16)])
    assert [len(b) for b in bucketed_batches(items[:20], 16, random.Random(1))] in ([16, 4], [4, 16])
    # a cap on padded seconds cuts long buckets into smaller batches, keeping every item
    capped = bucketed_batches(items, 16, random.Random(1), max_batch_s=240.0)
    assert sorted(i.utt.id for b in capped for i in b) == sorted(i.utt.id for i in items)
    assert all(len(b) <= 16 and len(b) * max(i.utt.duration_s for i in b) <= 240.0 for b in capped)
    assert len(capped) > len(batches) and min(len(b) for b in capped) < 16  # long items: fewer per batch


def test_scores_follow_the_metric_definitions():
    assert qa_scores(["the red house"], ["Red house."]) == {"exact": 100.0, "f1": 100.0}
    assert qa_scores(["red house"], ["red car"])["f1"] == pytest.approx(50.0)

    def items(task: str, labels: list[dict], **request) -> list[Item]:
        return [Item(None, TaskRequest(task=task, **request), x) for x in labels]  # type: ignore[arg-type]

    ner = items("ner", [{"text": "anna lives in paris", "entities": [["PERSON", 0, 4], ["GPE", 14, 5]]}])
    hyp = [parse_output(ner[0].request, "[PERSON anna] lives in [LOC paris]")]
    scores = score_task("ner", ner, hyp)
    assert scores["f1_combined"] == pytest.approx(100.0)  # GPE and LOC are both PLACE
    assert scores["f1_raw"] == pytest.approx(50.0)

    acts = items("dialog-act", [{"dialog_acts": ["question_general", "thanks"]}, {"dialog_acts": ["thanks"]}])
    hyps = [parse_output(a.request, t) for a, t in zip(acts, ["thanks, question_general", "acknowledge"])]
    assert score_task("dialog-act", acts, hyps)["accuracy"] == pytest.approx(50.0)

    tr = items("translate", [{"translation": "el gato negro duerme en la casa grande",
                              "translations": ["el gato negro duerme en la casa grande", "un gato negro"]}],
               target_lang="es")  # fmt: skip
    hyp = [parse_output(tr[0].request, "el gato negro duerme en la casa grande")]
    assert score_task("translate", tr, hyp)["bleu"] == pytest.approx(100.0)

    flat = headline({"asr": {"items": 2, "wer": 120.0, "reference_words": 9},
                     "sentiment": {"items": 2, "macro_f1": 60.0}})  # fmt: skip
    assert flat == {"asr_wer": 120.0, "sentiment_macro_f1": 60.0, "score": 30.0}  # 100 - WER floors at 0


@pytest.mark.slow
def test_speechlm_runs_under_ray_train_with_two_workers(tmp_path, tiny_corpus, frozen_parts):
    import yaml

    from spokenlm.cli import main

    out = tmp_path / "ray"
    config = tmp_path / "speechlm.yaml"
    config.write_text(yaml.safe_dump({
        "out_dir": str(out), "manifest": str(tiny_corpus), "encoder_dir": str(frozen_parts["encoder"]),
        "feature_cache": str(tmp_path / "features"), "token_cache": str(tmp_path / "tokens"),
        "compressor_dir": str(frozen_parts["compressor"]), "llm_dir": str(frozen_parts["llm"]),
        "lora_rank": 4, "lora_alpha": 8, "adapter_hidden_dim": 64, "batch_size": 4, "log_every": 5,
        "eval_every": 10, "eval_batch_size": 4, "max_new_tokens": 8,
        "optim": {"lr": 3e-3, "warmup_steps": 2, "max_steps": 10},
    }))  # fmt: skip
    import ray

    started_here = not ray.is_initialized()
    assert main(["train", "speechlm", "--config", str(config), "--workers", "2"]) == 0
    assert ray.is_initialized() != started_here  # a Ray the run started ends with it (tests after get their own)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["workers"] == 2 and metrics["steps"] == 10
    assert (out / "bundle" / "spokenlm.json").is_file() and (out / "eval_dev.json").is_file()
    shards = list((tmp_path / "features").rglob("shard-*.safetensors"))
    assert sum(len(load_file(str(s))) for s in shards) == 22  # each worker encoded its shards, none twice


def test_a_run_starts_from_an_earlier_bundle(tmp_path, tiny_corpus, frozen_parts):
    short = OptimConfig(lr=3e-3, warmup_steps=2, max_steps=10)
    train(_config(tmp_path / "first", tiny_corpus, frozen_parts, eval_every=100, optim=short))
    first_dev = json.loads((tmp_path / "first" / "eval_dev.json").read_text())

    out = tmp_path / "second"
    train(_config(out, tiny_corpus, frozen_parts, eval_every=100, optim=short, init_from=str(tmp_path / "first" / "bundle")))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # its step-0 dev loss is the first run's final one: the same weights, the same dev items
    assert rows[0]["step"] == 0 and rows[0]["val_loss"] == pytest.approx(first_dev["loss"], rel=1e-5)
    fresh = [json.loads(line) for line in (tmp_path / "first" / "metrics.jsonl").read_text().splitlines()][0]
    assert rows[0]["val_loss"] < fresh["val_loss"] - 0.2  # 10 steps moved it (5.53 -> 5.18)

    with pytest.raises(ValueError, match=r"init_from .*: LoRA r 4 there, 8 here"):
        train(_config(tmp_path / "third", tiny_corpus, frozen_parts, lora_rank=8, optim=short,
                      init_from=str(tmp_path / "first" / "bundle")))  # fmt: skip
    with pytest.raises(ValueError, match=r"init_from .*: its adapter is .*'hidden_dim': 64.*this run's is .*'hidden_dim': 32"):
        train(_config(tmp_path / "fourth", tiny_corpus, frozen_parts, adapter_hidden_dim=32, optim=short,
                      init_from=str(tmp_path / "first" / "bundle")))  # fmt: skip
    with pytest.raises(FileNotFoundError, match=r"init_from .* is not a directory; expected a speechlm bundle"):
        train(_config(tmp_path / "fifth", tiny_corpus, frozen_parts, init_from=str(tmp_path / "nowhere")))


def test_gradient_checkpointing_gives_the_same_training(tmp_path, tiny_corpus, frozen_parts):
    short = OptimConfig(lr=3e-3, warmup_steps=2, max_steps=10)
    losses = {}
    for checkpointing in (False, True):
        out = tmp_path / f"gc-{checkpointing}"
        train(_config(out, tiny_corpus, frozen_parts, eval_every=100, log_every=1, gradient_checkpointing=checkpointing,
                      optim=short))  # fmt: skip
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        losses[checkpointing] = [r["loss"] for r in rows if "loss" in r]
    assert len(losses[True]) == 10
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)  # recomputed, not changed


def test_train_transcripts_are_read_with_the_fold_lm_that_lacks_their_sentence(tmp_path):
    from spokenlm.compress import CTCCompressor, CTCCompressorConfig, load_compressor, save_compressor
    from spokenlm.compress.beam import CTCBeamConfig
    from spokenlm.ngram import fit_ngram
    from spokenlm.recipes.ctc_lm import FOLDS_FILE, transcript_fold
    from spokenlm.recipes.speechlm import transcript_readers

    sentences = ["a cat sat", "the dog ran", "a bird sang", "the fish swam", "one two three", "red and blue"]
    utts = [Utterance(id=f"u{i}", split="fine-tune" if i < 6 else "dev", audio=Path("x.wav"), duration_s=1.0,
                      labels={"text": text}) for i, text in enumerate(sentences + ["a new one"])]  # fmt: skip
    full = fit_ngram(sentences, 2).write_arpa(tmp_path / "lm.arpa")
    compressor = CTCCompressor(CTCCompressorConfig(input_dim=8, beam=CTCBeamConfig(lm_file="lm.arpa")))
    compressor.attach_lm(full)
    save_compressor(compressor, tmp_path / "compressor")
    (tmp_path / "folds").mkdir()
    files = []
    for fold in range(2):
        kept = [s for s in sentences if transcript_fold(s, 2) != fold]
        files.append(fit_ngram(kept, 2).write_arpa(tmp_path / "folds" / f"fold{fold}.arpa").name)
    (tmp_path / "folds" / FOLDS_FILE).write_text(json.dumps({"folds": 2, "files": files}))

    config = SpeechLMTrainConfig(out_dir="-", manifest="-", compressor_dir=str(tmp_path / "compressor"),
                                 encoder_base="whisper-tiny.en", llm_base="smollm2-135m-instruct",
                                 prompt_transcript=True, train_transcript_lms=str(tmp_path / "folds"))  # fmt: skip
    main = load_compressor(tmp_path / "compressor")
    groups = transcript_readers(config, main)(utts)
    assert groups[0][0] is main and [u.id for u in groups[0][1]] == ["u6"]  # dev: the full LM
    assert sorted(u.id for _, members in groups[1:] for u in members) == [f"u{i}" for i in range(6)]
    for reader, members in groups[1:]:
        fold = {transcript_fold(u.labels["text"], 2) for u in members}
        assert len(fold) == 1 and reader.lm_path.name == f"fold{fold.pop()}.arpa"
        # the fold's LM has never seen these sentences' words where no other sentence has them
        assert not {u.labels["text"].split()[-1] for u in members} & set(reader.beam.words)

    # without the setting every utterance is read by the compressor it is given
    plain = dataclasses.replace(config, train_transcript_lms=None)
    assert transcript_readers(plain, main)(utts) == [(main, utts)]
    with pytest.raises(ValueError, match="train_transcript_lms needs prompt_transcript"):
        dataclasses.replace(config, prompt_transcript=False).validate()
    with pytest.raises(ValueError, match=r"needs a compressor that reads with a word LM; .* has none"):
        transcript_readers(config, CTCCompressor(CTCCompressorConfig(input_dim=8)))
    (tmp_path / "folds" / "fold1.arpa").unlink()
    with pytest.raises(FileNotFoundError, match=r"fold LMs missing: \[.*fold1\.arpa'\]"):
        transcript_readers(config, main)
