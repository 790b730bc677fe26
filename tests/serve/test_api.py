"""The HTTP API with real clients: the official `openai` client on the audio routes, httpx on the
spokenlm routes, SSE streaming, probes and the OpenAPI schema. The bundle is untrained, so the tests
check shapes and invariants (spans index the text, streamed text equals the batch answer), not words."""

import io
import json
import threading

import pytest

pytestmark = pytest.mark.slow

MAX_NEW_TOKENS = 12  # untrained models rarely stop: keep answers short


@pytest.fixture(scope="module")
def server(tiny_bundle, serve_app):
    with serve_app(tiny_bundle, "test-api", max_new_tokens=MAX_NEW_TOKENS) as url:
        yield url


@pytest.fixture(scope="module")
def openai_client(server):
    from openai import OpenAI

    return OpenAI(base_url=f"{server}/v1", api_key="not-needed", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def clip(example_clips) -> bytes:
    return example_clips[0].read_bytes()


def _sse(text: str) -> list:
    events = [line[len("data: ") :] for line in text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def test_probes_models_and_openapi(http):
    assert http.get("/healthz").json() == {"status": "ok"}
    assert http.get("/readyz").json() == {"status": "ready", "model": "spokenlm"}
    models = http.get("/v1/models").json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["spokenlm", "whisper-1"]
    assert http.get("/v1/models/spokenlm").json()["id"] == "spokenlm"
    paths = http.get("/openapi.json").json()["paths"]
    for path in ("/v1/audio/transcriptions", "/v1/audio/translations", "/v1/understand", "/v1/summarize", "/v1/qa"):
        responses = paths[path]["post"]["responses"]
        assert "422" not in responses  # the routes answer 400, and the schema says so
        assert {"200", "400", "404", "408", "413", "500", "503", "504"} <= set(responses), (path, sorted(responses))
        assert responses["400"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}


def test_transcriptions_with_openai_client(openai_client, clip, example_clips):
    text = openai_client.audio.transcriptions.create(model="whisper-1", file=("clip.wav", clip)).text
    assert isinstance(text, str)
    plain = openai_client.audio.transcriptions.create(
        model="whisper-1", file=("clip.wav", clip), response_format="text", language="en", prompt="ignored"
    )
    assert plain == text  # greedy: same audio, same answer
    verbose = openai_client.audio.transcriptions.create(
        model="whisper-1", file=("clip.wav", clip), response_format="verbose_json", temperature=0.0
    )
    assert verbose.text == text and verbose.language == "english"
    assert verbose.duration == pytest.approx(2.99, abs=0.01)  # examples/*0880.wav
    assert verbose.segments[0].end == pytest.approx(verbose.duration)
    srt = openai_client.audio.transcriptions.create(model="whisper-1", file=("clip.wav", clip), response_format="srt")
    assert srt.startswith("1\n00:00:00,000 --> 00:00:02,990\n")
    vtt = openai_client.audio.transcriptions.create(model="whisper-1", file=("clip.wav", clip), response_format="vtt")
    assert vtt.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:02.990\n")
    sampled = openai_client.audio.transcriptions.create(model="whisper-1", file=("clip.wav", clip), temperature=0.7)
    assert isinstance(sampled.text, str)


def test_transcriptions_accept_other_containers(openai_client, example_clips):
    """Audio not in the repository: the clip re-encoded as FLAC and OGG, at 44.1 kHz stereo."""
    import numpy as np
    import soundfile as sf
    import torch
    import torchaudio

    wav, sr = sf.read(example_clips[1], dtype="float32")
    up = torchaudio.functional.resample(torch.from_numpy(wav), sr, 44_100).numpy()
    stereo = np.stack([up, 0.5 * up], axis=1)
    for fmt, name in (("FLAC", "clip.flac"), ("OGG", "clip.ogg")):
        buf = io.BytesIO()
        sf.write(buf, stereo, 44_100, format=fmt)
        out = openai_client.audio.transcriptions.create(
            model="whisper-1", file=(name, buf.getvalue()), response_format="verbose_json"
        )
        assert out.duration == pytest.approx(3.29, abs=0.02)


def test_translations_with_openai_client(openai_client, clip):
    out = openai_client.audio.translations.create(model="whisper-1", file=("clip.wav", clip))
    assert isinstance(out.text, str)
    verbose = openai_client.audio.translations.create(
        model="whisper-1", file=("clip.wav", clip), response_format="verbose_json", extra_body={"target_language": "fr"}
    )
    assert verbose.language == "fr"


def test_streaming_transcription_matches_batch_answer(openai_client, clip):
    whole = openai_client.audio.transcriptions.create(model="whisper-1", file=("clip.wav", clip)).text
    events = list(openai_client.audio.transcriptions.create(model="whisper-1", file=("clip.wav", clip), stream=True))
    assert events[-1].type == "transcript.text.done"
    deltas = "".join(e.delta for e in events[:-1])
    assert all(e.type == "transcript.text.delta" for e in events[:-1])
    assert " ".join(deltas.split()) == events[-1].text == whole


def test_understand_ner_spans(http, clip):
    r = http.post("/v1/understand", files={"file": ("clip.wav", clip)}, data={"task": "ner"})
    assert r.status_code == 200, r.text
    record = r.json()
    assert record["task"] == "ner" and isinstance(record["text"], str)
    for e in record["entities"]:  # char spans index the text; time spans lie inside the audio
        assert record["text"][e["start_char"] : e["end_char"]] == e["text"]
        if e["start_s"] is not None:
            assert 0 <= e["start_s"] <= e["end_s"] <= record["duration_s"] + 1e-6
    assert list(record["timing_ms"]) == ["load_audio", "encoder", "compress", "adapter", "llm"]
    assert record["path"] == "clip.wav" and len(record["spans_s"]) == round(record["tokens_per_second"] * record["duration_s"])


@pytest.mark.parametrize("task,key", [("sentiment", "sentiment"), ("dialog-act", "dialog_acts")])
def test_understand_classification(http, clip, task, key):
    record = http.post("/v1/understand", files={"file": ("clip.wav", clip)}, data={"task": task}).json()
    assert record["task"] == task and key in record
    if task == "dialog-act":
        assert isinstance(record[key], list)


def test_summarize_and_qa(http, clip):
    summary = http.post("/v1/summarize", files={"file": ("clip.wav", clip)}).json()
    assert summary["task"] == "summarize" and isinstance(summary["summary"], str)
    answer = http.post("/v1/qa", files={"file": ("clip.wav", clip)}, data={"question": "who speaks?"}).json()
    assert answer["task"] == "qa" and isinstance(answer["answer"], str)


def test_sse_stream_ends_with_the_result(http, clip):
    r = http.post("/v1/summarize", files={"file": ("clip.wav", clip)}, data={"stream": "true"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = _sse(r.text)
    done = events[-1]
    assert done["type"] == "done" and done["task"] == "summarize"
    deltas = "".join(e["delta"] for e in events[:-1])
    assert " ".join(deltas.split()) == done["summary"]
    whole = http.post("/v1/summarize", files={"file": ("clip.wav", clip)}).json()
    assert whole["summary"] == done["summary"]


def test_concurrent_requests_are_batched(http, clip):
    results: list = []

    def one():
        r = http.post("/v1/audio/transcriptions", files={"file": ("c.wav", clip)},
                      data={"model": "spokenlm", "response_format": "verbose_json"})  # fmt: skip
        results.append(r)

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.status_code == 200 for r in results), [r.text for r in results if r.status_code != 200]
    texts = {r.json()["text"] for r in results}
    assert len(texts) == 1  # batched under padding equals single
    sizes = [r.json()["spokenlm"]["batch_size"] for r in results]
    assert max(max(s["encoder"], s["llm"]) for s in sizes) > 1, sizes
