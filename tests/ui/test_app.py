"""ui/app.py through gradio_client: the launched demo, as a remote program (or a user's script) sees it.
The API mode, against the real Serve app, is in test_api.py."""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_asr_on_an_example_clip_shows_what_the_library_gives(predict, local_app_url, tiny_bundle, example_clips):
    from spokenlm.audio import load_audio
    from spokenlm.lm import GenerationConfig
    from spokenlm.model import load_bundle
    from spokenlm.tasks import TaskRequest

    out = predict(local_app_url, example_clips[0], task="asr", max_new_tokens=16)
    reference = load_bundle(tiny_bundle).run(
        [load_audio(example_clips[0])], [TaskRequest(task="asr")], GenerationConfig(max_new_tokens=16)
    )[0]
    assert out["status"].startswith("Done: **asr**")
    assert "untrained" in out["status"]
    assert out["transcript"] == reference.result.text
    assert out["ctc"] == reference.transcript
    assert out["record"]["text"] == reference.result.text
    stages = [row[0] for row in out["timing"]["data"]]
    assert stages == ["load_audio", "encoder", "compress", "adapter", "llm", "total"]
    assert out["plot"] is not None  # the waveform figure


def test_every_task_answers(predict, local_app_url, example_clips):
    for task, question in [("ner", ""), ("sentiment", ""), ("dialog-act", ""), ("translate", ""),
                           ("qa", "who is talking?"), ("summarize", "")]:  # fmt: skip
        out = predict(local_app_url, example_clips[1], task=task, question=question, max_new_tokens=4)
        assert out["status"].startswith(f"Done: **{task}**"), out["status"]
        assert out["record"]["task"] == task


BAD_AUDIO_MESSAGE = (  # text bytes named .wav
    "**Error:** not a recognised audio format: file 'notes.wav' starting with b'these ar'; "
    "expected WAV, FLAC, OGG, MP3, M4A or WebM"
)


@pytest.mark.parametrize(
    "task, question, message",
    [
        ("asr", "", BAD_AUDIO_MESSAGE),
        ("qa", "  ", "**Error:** task 'qa' needs a non-empty question"),
    ],
)
def test_bad_input_is_a_message_not_a_traceback(predict, local_app_url, bad_audio_file, example_clips, task, question,
                                                message):  # fmt: skip
    audio = bad_audio_file if task == "asr" else example_clips[0]
    out = predict(local_app_url, audio, task=task, question=question)
    assert out["status"] == message
    assert "Traceback" not in out["status"]
    assert out["transcript"] == "" and out["record"] is None


def test_main_listens_on_loopback_by_default(monkeypatch, unused_port):
    import gradio as gr

    from ui.app import main

    seen = {}
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kwargs: seen.update(kwargs))
    assert main(["--api", f"http://127.0.0.1:{unused_port()}", "--port", "7999"]) == 0  # nothing is called yet
    assert seen == {"server_name": "127.0.0.1", "server_port": 7999, "allowed_paths": [str(REPO / "examples")]}


def test_main_names_a_bad_bundle_in_one_line(tmp_path, capsys):
    from ui.app import main

    assert main(["--model", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err == f"spokenlm ui: error: {tmp_path / 'nope'} is not a spokenlm bundle: spokenlm.json is missing\n"
