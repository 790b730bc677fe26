"""Recipe `translator`: the truecase table never sees a held-out sentence, and its BLEU is scored."""

import json
import shutil

import pytest

from spokenlm.recipes.translator import TranslatorRecipeConfig, train
from spokenlm.translator import load_translator


def _row(i, split, text, translation):
    return {"id": f"u{i}", "split": split, "audio": f"audio/u{i}.wav", "duration_s": 1.0, "tasks": ["asr", "translate"],
            "task_labels": {"text": text, "translation": translation}}  # fmt: skip


@pytest.fixture
def corpus(tmp_path):
    rows = [_row(0, "fine-tune", "tom is here", "Tom está aquí."),
            _row(1, "dev", "i saw mary", "Vi a Mary."),
            _row(2, "test", "the shop is closed today", "La tienda está cerrada hoy.")]  # fmt: skip
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    # Mary is capitalised only in held-out sentences; Tom in two kept ones
    text = ["Tom is here.\tTom está aquí.", "Ask Tom.\tPregúntale a Tom.", "I saw Tom.\tVi a Tom.",
            "I saw Mary.\tVi a Mary.", "I saw  Mary!\tVi a Mary.", "Can I go?\t¿Puedo ir?"]  # fmt: skip
    (tmp_path / "pairs.tsv").write_text("\n".join(text) + "\n")
    return tmp_path


def test_the_table_leaves_held_out_sentences_out_and_bleu_is_scored(corpus):
    if not shutil.which("apertium"):
        pytest.skip("apertium is not installed (make setup installs apertium and apertium-eng-spa)")
    out = corpus / "out"
    metrics = train(TranslatorRecipeConfig(out_dir=str(out), manifest=str(corpus / "manifest.jsonl"),
                                           text=str(corpus / "pairs.tsv")))  # fmt: skip
    translator = load_translator(out / "translator")
    assert translator.truecase.table == {"tom": "Tom"}  # not "mary": both of its sentences are held out
    assert metrics["sentences"] == 6 and metrics["sentences_held_out"] == 2
    # Apertium's own output is the test reference: BLEU 100 with the table
    assert metrics["scores"]["test"]["bleu"] == pytest.approx(100.0)
    assert metrics["scores"]["test"]["examples"][0]["translation"] == "La tienda está cerrada hoy."
    assert 0.0 <= metrics["scores"]["dev"]["bleu"] < 100.0
    assert json.loads((out / "metrics.json").read_text())["scores"]["test"]["items"] == 1


def test_scoring_a_split_the_table_may_have_seen_is_refused(corpus):
    with pytest.raises(ValueError, match=r"score_splits \['dev', 'fine-tune'\] must be held out of the table"):
        TranslatorRecipeConfig(out_dir="x", manifest="m", text=str(corpus / "pairs.tsv"),
                               score_splits=("dev", "fine-tune")).validate()  # fmt: skip
