"""serve/config.yaml and the app builder, without a Ray cluster: the config is a valid Serve config
whose deployments exist, batch, autoscale and reserve GPUs; the builder rejects bad args early."""

import dataclasses
import inspect
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]  # conftest.py put it on sys.path

CONFIG = REPO / "serve" / "config.yaml"


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(CONFIG.read_text())


def test_config_is_a_valid_serve_config(config):
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(config)
    (app,) = schema.applications
    assert app.import_path == "serve.app:build_app" and app.route_prefix == "/"


def test_config_deployments_batch_autoscale_and_reserve_gpus(config):
    import serve.app

    (app,) = config["applications"]
    deployments = {d["name"]: d for d in app["deployments"]}
    assert set(deployments) == {"Ingress", "Encoder", "LLM"}
    for name in ("Encoder", "LLM"):
        d = deployments[name]
        assert d["user_config"]["max_batch_size"] > 1
        assert d["max_ongoing_requests"] >= d["user_config"]["max_batch_size"]  # else batches never fill
        assert d["autoscaling_config"]["max_replicas"] >= d["autoscaling_config"]["min_replicas"] >= 1
        assert d["ray_actor_options"]["num_gpus"] > 0
    # uploads in progress and requests at work both hold an ingress slot: room for both, and the probes
    assert deployments["Ingress"]["max_ongoing_requests"] > app["args"]["max_uploads"] + app["args"]["max_inflight"]
    known = {f.name for f in dataclasses.fields(serve.app.ServeSettings)}
    assert set(app["args"]) <= known


def test_config_header_gives_the_http_proxy_its_settings(config):
    """The proxy's JSON errors and upload limit are env vars of the Ray it runs in, not config: the
    documented `serve run` line sets both, the limit equal to the app's max_upload_mb."""
    from serve.edge import CALLBACK, MAX_UPLOAD_ENV

    header = CONFIG.read_text().split("\nproxy_location:")[0]
    (app,) = config["applications"]
    line = f"RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH={CALLBACK} {MAX_UPLOAD_ENV}={app['args']['max_upload_mb']:g} "
    assert line in header


def test_build_app_binds_the_three_deployments(tiny_bundle):
    from ray.serve import Application

    from serve.app import build_app

    assert len(inspect.signature(build_app).parameters) == 1  # Serve calls builders with one dict
    assert isinstance(build_app({"model_dir": str(tiny_bundle)}), Application)
    with pytest.raises(ValueError, match=r"unknown serve args \['max_batch'\]"):
        build_app({"model_dir": str(tiny_bundle), "max_batch": 4})
    with pytest.raises(ValueError, match="max_upload_mb must be > 0, got 0"):
        build_app({"model_dir": str(tiny_bundle), "max_upload_mb": 0})
    with pytest.raises(Exception, match="is not a spokenlm bundle"):
        build_app({"model_dir": str(REPO / "examples")})


def test_model_replicas_take_the_threads_they_are_given(tiny_bundle):
    """ServeSettings.threads reaches both replicas (bind_app passes it); each sets torch's threads from it,
    else from OMP_NUM_THREADS as Ray sets it."""
    import ray
    import torch

    from serve.app import build_app
    from serve.deployments import LLM, Encoder

    saved, had_ray = torch.get_num_threads(), ray.is_initialized()
    try:
        for deployment in (Encoder, LLM):
            replica = deployment.func_or_class(str(tiny_bundle), 60.0, 3)
            assert replica.stats() == {"running": 0, "stopped": {"cancelled": 0, "deadline": 0}, "threads": 3}
    finally:
        torch.set_num_threads(saved)
    # built outside Ray, a replica starts none: a Ray started here would lack the proxy settings of
    # start_ray, and every later Serve test in this process would run on it
    assert ray.is_initialized() == had_ray
    with pytest.raises(ValueError, match=r"threads must be an int >= 1 \(or None\), got 0"):
        build_app({"model_dir": str(tiny_bundle), "threads": 0})


def test_batching_user_config_is_checked():
    from serve.deployments import _configure_batching

    with pytest.raises(ValueError, match=r"unknown user_config keys \['batch'\]"):
        _configure_batching(object(), (), {"batch": 3})
    with pytest.raises(ValueError, match="max_batch_size must be >= 1"):
        _configure_batching(object(), (), {"max_batch_size": 0})


def test_response_formats():
    from serve.formats import transcription_body
    from spokenlm.output import RunOutput
    from spokenlm.tasks import TaskRequest, Transcript, Translation

    output = RunOutput(request=TaskRequest(task="asr"), result=Transcript(text="hi"), transcript="hy",
                       duration_s=3725.5, spans_s=(), tokens_per_second=10.0, timing_ms={})  # fmt: skip
    sizes = {"encoder": 1, "llm": 1}
    srt, _ = transcription_body(output.to_record(), "srt", batch_size=sizes)
    assert srt == "1\n00:00:00,000 --> 01:02:05,500\nhi\n\n"
    vtt, media = transcription_body(output.to_record(), "vtt", batch_size=sizes)
    assert vtt == "WEBVTT\n\n00:00:00.000 --> 01:02:05.500\nhi\n\n" and media.startswith("text/vtt")
    verbose, _ = transcription_body(output.to_record(), "verbose_json", batch_size=sizes)
    assert (verbose["task"], verbose["language"], verbose["text"]) == ("transcribe", "english", "hi")
    assert verbose["spokenlm"] == output.to_record() | {"batch_size": sizes}  # the whole record
    translated = RunOutput(request=TaskRequest(task="translate", target_lang="fr"), result=Translation("salut", "fr"),
                           transcript="hi", duration_s=1.0, spans_s=(), tokens_per_second=1.0, timing_ms={})  # fmt: skip
    verbose, _ = transcription_body(translated.to_record(), "verbose_json", batch_size=sizes)
    assert (verbose["task"], verbose["language"], verbose["text"]) == ("translate", "fr", "salut")


def test_importing_the_package_is_light():
    code = "import sys, serve; assert not {'ray', 'torch', 'fastapi'} & set(sys.modules), sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
