"""Task heads (spokenlm.heads): the fit against scikit-learn, pooling, save/load, and a bundle that
answers a task with its head (run, stream, CLI), on the tiny untrained bundle."""

import json

import numpy as np
import pytest
import torch

from spokenlm.heads import (
    HeadError,
    TaskHead,
    TaskHeadConfig,
    fit_head,
    load_head,
    pool_states,
    read_head_config,
    save_head,
)
from spokenlm.model import BundleError, drop_bundle_head, load_bundle, request_prompts, save_bundle, set_bundle_head
from spokenlm.tasks import DIALOG_ACTS, SENTIMENTS, DialogActs, Sentiment, TaskRequest


def _clusters(n, dim, labels, seed):
    """n states around one random centre per label set (well apart), and their label sets."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(len(labels), dim, generator=torch.Generator().manual_seed(99)) * 3
    which = torch.randint(len(labels), (n,), generator=gen)
    return centres[which] + torch.randn(n, dim, generator=gen), [labels[int(k)] for k in which]


ACT_SETS = [("thanks",), ("acknowledge", "answer_agree"), ("question_general",)]


def test_a_multi_label_head_learns_held_out_label_sets():
    config = TaskHeadConfig(task="dialog-act", model_dim=16, pooling="mean")
    train_x, train_y = _clusters(120, 16, ACT_SETS, seed=0)
    test_x, test_y = _clusters(60, 16, ACT_SETS, seed=1)
    head = fit_head(config, train_x, train_y, c=1.0)
    assert head.predict(test_x) == test_y  # the clusters are far apart: every held-out set exactly
    assert head.answer(test_x[:1]) == [", ".join(test_y[0])]
    # a label never seen in training is never predicted; every row gets at least its most likely label
    assert all(p for p in head.predict(torch.randn(50, 16) * 10))
    assert not any("apology" in p for p in head.predict(torch.randn(50, 16) * 10))


def test_the_head_matches_scikit_learn_on_the_standardised_states():
    from sklearn.linear_model import LogisticRegression

    config = TaskHeadConfig(task="sentiment", model_dim=8, pooling="mean")
    x, y = _clusters(90, 8, [("Negative",), ("Positive",), ("Neutral",)], seed=2)
    x = x * torch.linspace(0.1, 10, 8) + 5  # features on different scales: the standardisation matters
    head = fit_head(config, x, y, c=0.3)
    z = ((x.double() - x.double().mean(0)) / x.double().std(0)).numpy()
    reference = LogisticRegression(C=0.3, max_iter=2000, random_state=0).fit(z, [SENTIMENTS.index(s[0]) for s in y])
    expected = reference.decision_function(z)  # (N, 3): columns in class order 0, 1, 2
    np.testing.assert_allclose(head(x).detach().numpy(), expected, atol=1e-3)
    assert [p[0] for p in head.predict(x)] == [SENTIMENTS[k] for k in reference.predict(z)]


def test_threshold_and_one_class_edge_cases():
    head = TaskHead(TaskHeadConfig(task="dialog-act", model_dim=2, pooling="mean", threshold=0.4))
    with torch.no_grad():
        head.linear.weight.zero_()
        head.linear.bias.fill_(-5.0)
        head.linear.bias[DIALOG_ACTS.index("thanks")] = 0.0  # p = 0.5
        head.linear.bias[DIALOG_ACTS.index("apology")] = -0.2  # p = 0.45
    assert head.predict(torch.zeros(1, 2)) == [("apology", "thanks")]
    head.linear.bias.data[DIALOG_ACTS.index("thanks")] = -1.0  # none at the threshold: the most likely alone
    assert head.predict(torch.zeros(1, 2)) == [("apology",)]
    with pytest.raises(HeadError, match=r"the training labels hold one class only \('Neutral'\): nothing to fit"):
        fit_head(TaskHeadConfig(task="sentiment", model_dim=2, pooling="mean"), torch.randn(4, 2), [("Neutral",)] * 4)


def test_pooling_reads_only_the_real_positions_of_left_padded_prompts():
    hidden = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert torch.equal(pool_states(hidden, mask, "last"), hidden[:, -1])
    mean = pool_states(hidden, mask, "mean")
    assert torch.allclose(mean[0], hidden[0, 2:].mean(0)) and torch.allclose(mean[1], hidden[1].mean(0))
    assert torch.equal(pool_states(hidden, mask, "last+mean"), torch.cat([hidden[:, -1], mean], dim=1))
    head = TaskHead(TaskHeadConfig(task="sentiment", model_dim=3, pooling="last+mean"))
    assert head(pool_states(hidden, mask, "last+mean")).shape == (2, 3)  # reads (B, 2 x model_dim)


def test_save_load_round_trip_and_named_errors(tmp_path):
    x, y = _clusters(60, 16, ACT_SETS, seed=3)
    head = fit_head(TaskHeadConfig(task="dialog-act", model_dim=16, pooling="last", threshold=0.3), x, y)
    save_head(head, tmp_path / "h", metrics={"dev": 1.0})
    again = load_head(tmp_path / "h")
    assert again.config == TaskHeadConfig(task="dialog-act", model_dim=16, pooling="last", threshold=0.3,
                                          labels=DIALOG_ACTS)  # fmt: skip
    assert torch.equal(again(x), head(x))
    assert json.loads((tmp_path / "h" / "head.json").read_text())["metrics"] == {"dev": 1.0}
    with pytest.raises(HeadError, match=r"not a task head \(no head.json\)"):
        load_head(tmp_path)
    (tmp_path / "h" / "head.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(HeadError, match="cannot read the head's weights"):
        load_head(tmp_path / "h")
    with pytest.raises(HeadError, match=r"states must be \(B, 16\), got shape \(2, 3\)"):
        head(torch.zeros(2, 3))
    cases = [
        (dict(task="qa", model_dim=4), r"no head for task 'qa'; heads answer \['dialog-act', 'sentiment'\]"),
        (dict(task="sentiment", model_dim=0), "model_dim must be a positive int, got 0"),
        (dict(task="sentiment", model_dim=4, pooling="max"), r"pooling must be one of \('last', 'mean', 'last\+mean'\), got 'max'"),
        (dict(task="dialog-act", model_dim=4, threshold=1.0), r"threshold must be in \(0, 1\), got 1.0"),
        (dict(task="sentiment", model_dim=4, labels=("Happy",)), r"labels \['Happy'\] are not sentiment labels"),
    ]
    for kwargs, message in cases:
        with pytest.raises(HeadError, match=message):
            TaskHeadConfig(**kwargs).validate()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "head.json").write_text("{}")
    with pytest.raises(HeadError, match="not a head config"):
        read_head_config(tmp_path / "bad")


# --- a bundle with a head ------------------------------------------------------------------------


def _waves():
    sr, gen = 16000, torch.Generator().manual_seed(0)
    tone = torch.sin(torch.arange(sr) * 2 * torch.pi * 220 / sr) * 0.3
    return [tone, torch.randn(sr, generator=gen) * 0.1, tone[: sr // 2]]


@pytest.fixture(scope="module")
def headed(tiny_bundle, tmp_path_factory):
    """The tiny bundle copied, a dialog-act head fitted on random states of its width (what it says
    does not matter here: that the bundle answers with it does)."""
    root = tmp_path_factory.mktemp("headed")
    model = load_bundle(tiny_bundle)
    bundle = save_bundle(model, root / "bundle")
    x, y = _clusters(60, model.llm.model_dim, ACT_SETS, seed=4)
    save_head(fit_head(TaskHeadConfig(task="dialog-act", model_dim=model.llm.model_dim, pooling="mean"), x, y), root / "head")
    return bundle, root / "head"


def test_a_bundle_answers_its_head_task_with_the_head_and_decodes_the_rest(headed, capsys):
    from spokenlm.cli import main

    bundle, head_dir = headed
    plain = load_bundle(bundle)
    waves = _waves()
    requests = [TaskRequest(task="dialog-act"), TaskRequest(task="sentiment"), TaskRequest(task="dialog-act")]
    before = plain.run(waves, requests)

    assert main(["bundle", "set", str(bundle), "--head", str(head_dir)]) == 0
    assert json.loads(capsys.readouterr().out)["heads"] == {"dialog-act": "heads/dialog-act"}
    model = load_bundle(bundle)
    assert set(model.llm.heads) == {"dialog-act"}
    outputs = model.run(waves, requests)
    # the head's answer is its labels over the LLM's reading of the same prompt
    speech = model.encode_recordings(waves)
    prompts = request_prompts(model.llm, [requests[0]] * 3, speech.char_times, prompt_texts=speech.prompt_texts)
    head = load_head(head_dir)
    states = model.llm.prompt_states(prompts, speech.projected, speech.lengths, head.config.pooling)
    expected = head.predict(states)
    assert isinstance(outputs[0].result, DialogActs)
    assert [outputs[0].result.acts, outputs[2].result.acts] == [expected[0], expected[2]]
    assert isinstance(outputs[1].result, Sentiment) and outputs[1].result == before[1].result  # decoded as before
    # streaming gives the head's answer at once, the same one
    events = list(model.stream(waves[2], requests[2]))
    assert events[-1].result.acts == expected[2] and "".join(events[:-1]) == ", ".join(expected[2])
    # saved again, the bundle keeps its head
    resaved = save_bundle(model, bundle.parent / "resaved")
    assert set(load_bundle(resaved).llm.heads) == {"dialog-act"}

    assert main(["bundle", "set", str(bundle), "--drop-head", "dialog-act"]) == 0
    assert json.loads(capsys.readouterr().out)["heads"] == {}
    again = load_bundle(bundle)
    assert again.llm.heads == {} and [o.result for o in again.run(waves, requests)] == [o.result for o in before]


def test_heads_that_do_not_fit_the_bundle_are_refused(headed, tmp_path):
    bundle, head_dir = headed
    x, y = _clusters(30, 8, ACT_SETS, seed=5)
    save_head(fit_head(TaskHeadConfig(task="dialog-act", model_dim=8, pooling="mean"), x, y), tmp_path / "narrow")
    with pytest.raises(BundleError, match=r"the head reads states of size 8, but .*'s LLM has model_dim 64"):
        set_bundle_head(bundle, tmp_path / "narrow")
    with pytest.raises(BundleError, match=r"has no 'sentiment' head; its heads: none"):
        drop_bundle_head(bundle, "sentiment")
    # a bundle whose spokenlm.json names a head that is not there says so when loaded
    meta = json.loads((bundle / "spokenlm.json").read_text())
    meta["llm"]["heads"] = {"dialog-act": "heads/missing"}
    broken = tmp_path / "broken"
    import shutil

    shutil.copytree(bundle, broken)
    (broken / "spokenlm.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=r"its dialog-act head: .*not a task head \(no head.json\)"):
        load_bundle(broken)


def test_the_committed_part_carries_the_head_its_recipe_picked():
    from pathlib import Path

    from spokenlm.model import read_bundle_meta

    part = Path(__file__).resolve().parents[1] / "models" / "parts" / "speechlm"
    meta = read_bundle_meta(part / "bundle")
    assert meta["llm"]["heads"] == {"dialog-act": "heads/dialog-act", "sentiment": "heads/sentiment"}
    for task in ("dialog-act", "sentiment"):
        head = load_head(part / "bundle" / "heads" / task)
        pick = json.loads((part / "heads" / task / "metrics.json").read_text())["pick"]
        assert head.config.task == task
        assert (head.config.pooling, head.config.threshold) == (pick["pooling"], pick["threshold"])
        assert head.config.model_dim == meta["adapter"]["output_dim"]  # the LLM's width: what the adapter feeds it
        # fitted on read prose too, as the shipped configs say, and scored on held-out prose apart
        metrics = json.loads((part / "heads" / task / "metrics.json").read_text())
        assert metrics["config"]["narration_streams"] == ["ljspeech", "harvard", "arctic"]
        assert metrics["narration"]["train_items"] > 0 and metrics["narration"]["splits"]["test"]["items"] > 0
