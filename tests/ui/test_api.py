"""The UI's API mode against the real Serve app (tests/ui/conftest.py): the record the Serve API
answers is the record `spokenlm run --json` prints and the in-process UI shows, for every task."""

import json

import pytest

from serve.routes import record_of, request_form
from spokenlm.audio import load_audio
from spokenlm.output import RECORD_KEYS
from spokenlm.tasks import TaskRequest
from ui.backends import ApiBackend, ApiError, LocalBackend

pytestmark = pytest.mark.slow

# (request, the CLI's task arguments)
REQUESTS = [
    (TaskRequest(task="asr"), ["--task", "asr"]),
    (TaskRequest(task="translate", target_lang="fr"), ["--task", "translate", "--target-lang", "fr"]),
    (TaskRequest(task="ner"), ["--task", "ner"]),
    (TaskRequest(task="sentiment"), ["--task", "sentiment"]),
    (TaskRequest(task="dialog-act"), ["--task", "dialog-act"]),
    (TaskRequest(task="qa", question="who is he?"), ["--task", "qa", "--question", "who is he?"]),
    (TaskRequest(task="summarize"), ["--task", "summarize"]),
]


@pytest.fixture(scope="module")
def clip(example_clips):
    return example_clips[0]  # 2.99 s: within the Serve app's max_duration_s


@pytest.fixture(scope="module")
def local(tiny_bundle) -> LocalBackend:
    return LocalBackend(tiny_bundle)


def _without_timing_values(record: dict) -> dict:
    return record | {"timing_ms": list(record["timing_ms"])}  # stage names compared, not their times


@pytest.mark.parametrize("request_, cli_args", REQUESTS, ids=[r.task for r, _ in REQUESTS])
def test_cli_serve_and_ui_give_the_same_record(request_, cli_args, serve_api_url, serve_generation, local,
                                               tiny_bundle, clip, monkeypatch, capsys):  # fmt: skip
    import httpx

    from spokenlm.cli import main

    monkeypatch.chdir(clip.parent)  # the CLI's `path` is the file as given: its name, as an upload's
    args = ["run", "--model", str(tiny_bundle), *cli_args, "--json", "--max-new-tokens",
            str(serve_generation.max_new_tokens), clip.name]  # fmt: skip
    assert main(args) == 0
    (line,) = capsys.readouterr().out.splitlines()
    cli = json.loads(line)

    path, fields = request_form(request_)
    answer = httpx.post(serve_api_url + path, data=fields, files={"file": (clip.name, clip.read_bytes())}, timeout=120)
    assert answer.status_code == 200, answer.text
    served = record_of(answer.json())

    over_api = ApiBackend(serve_api_url).run(str(clip), request_)
    in_process = local.run(str(clip), request_, serve_generation)

    assert tuple(cli) == RECORD_KEYS
    assert cli["task"] == request_.task and cli["target_lang"] == request_.target_lang
    expected = _without_timing_values(cli)
    for record in (served, over_api.record, in_process.record):
        assert _without_timing_values(record) == expected
    assert list(cli["timing_ms"]) == ["load_audio", "encoder", "compress", "adapter", "llm"]
    stages = list(over_api.timing_ms)  # the UI's table: its own decoding, the server's stages, the round trip
    assert stages == ["load_audio", *(f"server/{s}" for s in cli["timing_ms"]), "round_trip"]


def test_api_backend_shows_the_servers_error_message(serve_api_url, example_clips):
    longer = example_clips[1]  # 3.29 s: decodes here, but the server's max_duration_s is 3.1 s
    message = (rf"answered 400 to /v1/audio/transcriptions: could not use file '{longer.name}': "
               r"audio too long: 3.290 s, maximum is 3.100 s")  # fmt: skip
    with pytest.raises(ApiError, match=message):
        ApiBackend(serve_api_url).run(str(longer), TaskRequest(task="asr"))


def test_api_backend_refuses_an_answer_for_another_request(serve_api_url, clip, monkeypatch):
    """A server that answers for other parameters (a renamed form field it no longer reads) is an error."""
    import httpx

    real_post = httpx.post

    def drop_target_language(url, *, data, **kwargs):
        return real_post(url, data={k: v for k, v in data.items() if k != "target_language"}, **kwargs)

    monkeypatch.setattr(httpx, "post", drop_target_language)
    with pytest.raises(ApiError, match="answered /v1/audio/translations for .*target_lang='es'.*not for the request sent"):
        ApiBackend(serve_api_url).run(str(clip), TaskRequest(task="translate", target_lang="fr"))


def test_api_mode_renders_the_serve_apis_answer(serve_api_url, serve_generation, predict, launch, tiny_bundle, clip,
                                                bad_audio_file):  # fmt: skip
    from spokenlm.model import load_bundle
    from ui.app import build_app

    model = load_bundle(tiny_bundle)
    url = launch(build_app(api_url=serve_api_url))
    out = predict(url, clip, task="ner")
    (expected,) = model.run([load_audio(clip)], [TaskRequest(task="ner")], serve_generation)
    assert out["transcript"] == expected.result.text
    assert out["ctc"] == expected.transcript
    pieces = [(p["token"], p["class_or_confidence"]) for p in out["entities"]]  # gr.HighlightedText's payload
    assert "".join(token for token, _ in pieces) == out["transcript"]
    assert [(token, tag) for token, tag in pieces if tag] == [(e.text, e.tag) for e in expected.result.entities]
    assert "round_trip" in [row[0] for row in out["timing"]["data"]]
    assert out["record"]["path"] == clip.name and out["plot"] is not None
    out = predict(url, clip, task="sentiment")
    (expected,) = model.run([load_audio(clip)], [TaskRequest(task="sentiment")], serve_generation)
    assert out["sentiment"] == (expected.result.label or "(no sentiment label in the output)")
    out = predict(url, bad_audio_file, task="asr")
    assert out["status"].startswith("**Error:** not a recognised audio format: file 'notes.wav'"), out["status"]
