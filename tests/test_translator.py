"""The Apertium translator (spokenlm.translator): restoring transcripts, Apertium's output as sentences,
errors by name, and a bundle that answers translate requests with it (run, stream, CLI, save)."""

import json

import pytest
import torch

import spokenlm.translator as translator_module
from spokenlm.model import BundleError, load_bundle, save_bundle, set_bundle_translator
from spokenlm.tasks import TaskRequest, Translation
from spokenlm.translator import (
    Translator,
    TranslatorConfig,
    TranslatorError,
    Truecaser,
    finish_translation,
    is_question,
    load_translator,
    read_translator_config,
    save_translator,
    source_sentence,
)


@pytest.fixture(scope="module")
def apertium():
    if not translator_module.shutil.which("apertium"):
        pytest.skip("apertium is not installed (make setup installs apertium and apertium-eng-spa)")


def test_the_truecaser_learns_usual_case_after_the_first_word():
    sentences = ["Tom is here.", "I saw Tom.", "Ask Tom.", "The cat sat.", "I know.", "May I go?", "Can I sit?", "It may rain.",
                 "It may snow.", "We met Lisa."]  # fmt: skip
    truecase = Truecaser.fit(sentences)
    # "tom" is capitalised mid-sentence; "the" and "may" only start sentences or are lower case mid-sentence;
    # "lisa" was seen once (under min_count 2); "i" mid-sentence is "I"
    assert truecase.table == {"tom": "Tom", "i": "I"}
    assert truecase("i saw tom and the dog") == "I saw Tom and the dog"
    assert Truecaser.fit(sentences, min_count=1).table["lisa"] == "Lisa"


def test_a_truecase_table_round_trips_and_a_bad_one_is_refused(tmp_path):
    table = Truecaser({"tom": "Tom", "ñu": "Ñu"})
    table.save(tmp_path / "t.json")
    assert Truecaser.load(tmp_path / "t.json").table == table.table
    (tmp_path / "bad.json").write_text('["tom"]')
    with pytest.raises(ValueError, match=r"bad.json: a truecase table maps lower-case words to strings"):
        Truecaser.load(tmp_path / "bad.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match=r"broken.json: not a truecase table"):
        Truecaser.load(tmp_path / "broken.json")


@pytest.mark.parametrize(
    "text, question", [("where is the station", True), ("where's my key", True), ("can you help", True),
                       ("don't do that", False), ("the shop is closed", False), ("", False)],
)  # fmt: skip
def test_questions_are_told_by_their_first_word(text, question):
    assert is_question(text) is question
    if text:
        assert source_sentence(text, Truecaser()).endswith("?" if question else ".")


def test_apertiums_output_becomes_a_sentence():
    assert finish_translation("la tienda *está  cerrada #hoy @ya .", False) == "La tienda está cerrada hoy ya."
    assert finish_translation("dónde es la estación?", True) == "¿Dónde es la estación?"
    assert finish_translation("¿Qué?", True) == "¿Qué?"
    assert finish_translation("  ", True) == ""


@pytest.mark.parametrize(
    "change, message",
    [(dict(engine="google"), r"unknown translator engine 'google'; expected 'apertium'"),
     (dict(pair="eng spa; rm -rf /"), r"pair must name an Apertium mode such as 'eng-spa'"),
     (dict(target_lang="xx"), r"target_lang must be one of es, fr, de, got 'xx'"),
     (dict(timeout_s=0), r"timeout_s must be in \(0, 3600\] seconds, got 0")],
)  # fmt: skip
def test_bad_configs_are_refused_by_name(change, message):
    with pytest.raises(ValueError, match=message):
        TranslatorConfig(**change).validate()


def test_a_translator_dir_round_trips_and_unknown_keys_are_refused(tmp_path, apertium):
    save_translator(tmp_path / "t", TranslatorConfig(timeout_s=5.0), Truecaser({"tom": "Tom"}))
    loaded = load_translator(tmp_path / "t")
    assert loaded.config == TranslatorConfig(timeout_s=5.0) and loaded.truecase.table == {"tom": "Tom"}
    (tmp_path / "t" / "translator.json").write_text(json.dumps({"pair": "eng-spa", "voice": "x"}))
    with pytest.raises(ValueError, match=r"unknown keys \['voice'\]"):
        read_translator_config(tmp_path / "t")


def test_apertium_translates_each_transcript_on_its_own_line(apertium):
    translator = Translator(TranslatorConfig(), Truecaser({"tom": "Tom", "i": "I"}))
    texts = ["the shop is closed today", "", "i knew tom", "where is the station", "line one\nline two", "^a$ [b] /c"]
    out = translator.translate(texts)
    assert out[:3] == ["La tienda está cerrada hoy.", "", "Supe Tom."]
    assert out[3].startswith("¿") and out[3].endswith("?")
    assert len(out) == len(texts) and out[4] and out[5]  # a newline or Apertium's stream syntax shifts nothing
    # alone, each reads the same: no transcript leaks into another's line
    assert [translator.translate([t])[0] for t in texts] == out
    # without the table "tom" is not a name and "i" not a pronoun
    assert Translator(TranslatorConfig()).translate(["i knew tom"]) != ["Supe Tom."]
    assert translator.translate([]) == [] and translator.translate(["", " "]) == ["", ""]


def test_a_missing_apertium_or_pair_is_named_with_its_package(monkeypatch, apertium):
    with pytest.raises(TranslatorError, match=r"Apertium has no 'eng-xyz' pair \(installed: .*eng-spa.*\): "
                       r"apt-get install apertium-eng-xyz"):  # fmt: skip
        Translator(TranslatorConfig(pair="eng-xyz"))
    with pytest.raises(TranslatorError, match=r"^Apertium took over 0.001 s for 1 transcripts$"):
        Translator(TranslatorConfig(timeout_s=0.001)).translate(["a sentence too slow to translate"])
    ready = Translator(TranslatorConfig())

    def gone(*args, **kwargs):
        raise FileNotFoundError(2, "No such file or directory", "apertium")

    monkeypatch.setattr(translator_module.subprocess, "run", gone)  # removed after the translator was loaded
    with pytest.raises(TranslatorError, match=r"^Apertium could not run: .*No such file or directory"):
        ready.translate(["hello"])
    monkeypatch.setattr(translator_module.shutil, "which", lambda name: None)
    with pytest.raises(TranslatorError, match=r"runs Apertium, which is not installed: apt-get install apertium apertium-eng-spa"):
        Translator(TranslatorConfig())


def _waves():
    sr, gen = 16000, torch.Generator().manual_seed(0)
    tone = torch.sin(torch.arange(sr) * 2 * torch.pi * 220 / sr) * 0.3
    return [tone, torch.randn(sr, generator=gen) * 0.1]


@pytest.fixture(scope="module")
def translating(hybrid_bundle, tmp_path_factory, apertium):
    """The tiny bundle with the hybrid prompt (a translator needs a transcript), and a translator dir."""
    root = tmp_path_factory.mktemp("translating")
    return hybrid_bundle, save_translator(root / "translator", TranslatorConfig(), Truecaser({"tom": "Tom"}))


def test_a_bundle_answers_translations_into_its_language_with_the_translator(translating, capsys):
    from spokenlm.cli import main

    bundle, translator_dir = translating
    waves = _waves()
    requests = [TaskRequest(task="translate", target_lang="es"), TaskRequest(task="translate", target_lang="fr")]
    before = load_bundle(bundle).run(waves, requests)

    assert main(["bundle", "set", str(bundle), "--translator", str(translator_dir)]) == 0
    assert json.loads(capsys.readouterr().out)["translator"] == "translator"
    model = load_bundle(bundle)
    outputs = model.run(waves, requests)
    expected = load_translator(translator_dir).translate([outputs[0].transcript])
    assert isinstance(outputs[0].result, Translation) and outputs[0].result.text == expected[0]
    assert outputs[1].result == before[1].result  # French: the LLM decodes it, as before
    events = list(model.stream(waves[0], requests[0]))
    assert events[-1].result.text == expected[0] and "".join(events[:-1]) == expected[0]
    # saved again (and sped up), the bundle keeps its translator
    assert load_bundle(save_bundle(model, bundle.parent / "resaved")).llm.translator.truecase.table == {"tom": "Tom"}
    from spokenlm.lm import LLMSpeedups, speed_up_llm

    assert speed_up_llm(load_bundle(bundle).llm, LLMSpeedups(dtype="bfloat16")).translator is not None

    assert main(["bundle", "set", str(bundle), "--translator", "none"]) == 0
    assert json.loads(capsys.readouterr().out)["translator"] is None
    assert not (bundle / "translator").exists()
    assert [o.result for o in load_bundle(bundle).run(waves, requests)] == [o.result for o in before]


def test_translators_that_cannot_serve_the_bundle_are_refused(translating, tiny_bundle, tmp_path, monkeypatch):
    bundle, translator_dir = translating
    with pytest.raises(BundleError, match=r"its LLM reads no transcript in the prompt; there is none to translate"):
        set_bundle_translator(tiny_bundle, translator_dir)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match=r"translator.json: not a translator config"):
        set_bundle_translator(bundle, tmp_path / "empty")
    set_bundle_translator(bundle, translator_dir)
    monkeypatch.setattr(translator_module.shutil, "which", lambda name: None)
    with pytest.raises(BundleError, match=r"its translator: this translator runs Apertium, which is not installed"):
        load_bundle(bundle)
    monkeypatch.undo()
    set_bundle_translator(bundle, None)


def test_the_committed_part_translates_with_the_table_its_recipe_counted(apertium):
    from pathlib import Path

    from spokenlm.model import load_bundle_llm, read_bundle_meta

    part = Path(__file__).resolve().parents[1] / "models" / "parts" / "speechlm"
    assert read_bundle_meta(part / "bundle")["llm"]["translator"] == "translator"
    translator = load_translator(part / "bundle" / "translator")
    metrics = json.loads((part / "translator" / "metrics.json").read_text())
    assert len(translator.truecase.table) == metrics["truecase_words"] and translator.config.target_lang == "es"
    assert translator.truecase("tom and mary") == "Tom and Mary"
    assert load_bundle_llm(part / "bundle").translator.translate(["the shop is closed today"]) == ["La tienda está cerrada hoy."]
