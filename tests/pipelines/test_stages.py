"""Stage actors against the in-process SpeechLM: same tokens, same texts, same entity times."""

import json
import shutil

import pytest
import torch

from pipelines.stages import StageResources, StagesConfig, run_files_on_ray
from spokenlm.audio import SAMPLE_RATE, load_audio
from spokenlm.lm import GenerationConfig
from spokenlm.model import (
    decode_speech,
    encode_chunks,
    join_chunks,
    load_bundle,
    load_bundle_compressor,
    load_bundle_encoder,
    load_bundle_llm,
)
from spokenlm.speech import adapt
from spokenlm.tasks import TaskRequest

GREEDY = GenerationConfig(max_new_tokens=12)


@pytest.fixture(scope="module")
def chunky_bundle(tiny_bundle, tmp_path_factory):
    """The tiny bundle with max_chunk_s = 1 s, so each 3 s example clip is cut at pauses into chunks."""
    path = tmp_path_factory.mktemp("chunky") / "bundle"
    shutil.copytree(tiny_bundle, path)
    meta = json.loads((path / "spokenlm.json").read_text())
    (path / "spokenlm.json").write_text(json.dumps(meta | {"max_chunk_s": 1.0}))
    return path


@pytest.fixture(scope="module")
def ray_session():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=200 * 2**20)
    yield ray
    ray.shutdown()


def test_stage_functions_reproduce_encode_recordings_and_run(chunky_bundle, example_clips):
    torch.set_num_threads(1)
    model = load_bundle(chunky_bundle)
    waves = [load_audio(p) for p in example_clips]
    expected = model.encode_recordings(waves)

    encoder, max_chunk_s = load_bundle_encoder(chunky_bundle)
    compressor, adapter = load_bundle_compressor(chunky_bundle)
    batches = encode_chunks(encoder, waves, max_chunk_s=max_chunk_s, max_chunks_per_batch=3)
    assert max_chunk_s == 1.0 and sum(len(b.items) for b in batches) > len(waves)  # chunking happened
    assert [len(b.items) for b in batches][:-1] == [3] * (len(batches) - 1)
    assert all(b.audio == [] for b in batches)  # the samples travel only for a transcriber
    kept = encode_chunks(encoder, waves, max_chunk_s=max_chunk_s, max_chunks_per_batch=3, keep_audio=True)
    for i, wav in enumerate(waves):  # a recording's chunks, in order, are the recording
        torch.testing.assert_close(torch.cat([a for b in kept for item, a in zip(b.items, b.audio) if item == i]), wav)
    got = join_chunks(compressor, batches, [w.shape[-1] / SAMPLE_RATE for w in waves])
    # encode_recordings batches 8 chunks at a time; the tiny encoder's layer-norm convs make batching
    # invisible, so 3-chunk batches must give the very same tokens
    torch.testing.assert_close(got.embeddings, expected.embeddings)
    assert got.lengths.tolist() == expected.lengths.tolist()
    assert got.spans_s == expected.spans_s and got.transcripts == expected.transcripts
    assert got.char_times == expected.char_times and got.durations_s == expected.durations_s

    requests = [TaskRequest(task="ner"), TaskRequest(task="asr")]
    reference = model.run(waves, requests, GREEDY)
    llm = load_bundle_llm(chunky_bundle)
    outputs = decode_speech(llm, adapt(adapter, got), requests, GREEDY)
    assert [o.result for o in outputs] == [o.result for o in reference]
    assert [o.to_record() | {"timing_ms": {}} for o in outputs] == [o.to_record() | {"timing_ms": {}} for o in reference]


def test_stages_config_validation():
    StagesConfig().validate()
    with pytest.raises(ValueError, match="max_in_flight must be >= 1, got 0"):
        StagesConfig(max_in_flight=0).validate()
    with pytest.raises(ValueError, match="llm: num_gpus above 1 must be a whole number, got 1.5"):
        StagesConfig(llm=StageResources(num_gpus=1.5)).validate()


@pytest.mark.slow
def test_run_files_on_ray_matches_the_in_process_path(ray_session, tiny_bundle, example_clips, tmp_path):
    """`spokenlm run --ray` == `spokenlm run`: same JSON records (timing aside), greedy, file by file."""
    torch.set_num_threads(1)  # the actors run one intra-op thread each
    request = TaskRequest(task="ner")
    model = load_bundle(tiny_bundle)
    expected = [model.run([load_audio(p)], [request], GREEDY)[0].with_audio(path=str(p)).to_record() for p in example_clips]

    missing = tmp_path / "missing.wav"
    files = [str(example_clips[0]), str(missing), str(example_clips[1])]
    outputs = run_files_on_ray(tiny_bundle, files, request, GREEDY, StagesConfig(max_in_flight=2))

    assert [o.path for o in outputs] == files
    assert outputs[1].output is None and outputs[1].error == f"audio file not found: '{missing}'"
    got = [o.output.to_record() for o in (outputs[0], outputs[2])]
    for record in expected + got:
        record.pop("timing_ms")  # the Ray path also times decoding the file
    assert got == expected
    assert list(outputs[0].output.timing_ms) == ["load_audio", "encoder", "compress", "adapter", "llm"]


@pytest.mark.slow
def test_cli_run_with_ray_prints_what_the_in_process_run_prints(ray_session, tiny_bundle, example_clips, capsys):
    from spokenlm.cli import main

    args = ["run", "--model", str(tiny_bundle), "--task", "ner", "--json", "--max-new-tokens", "6"]
    files = [str(p) for p in example_clips]
    assert main([*args, *files]) == 0
    local = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert main([*args, "--ray", *files]) == 0
    on_ray = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    for record in local + on_ray:
        record.pop("timing_ms")
    assert on_ray == local and len(local) == len(files)


@pytest.mark.slow
def test_cli_run_with_ray_stops_on_sigterm_with_ray_shut_down(tiny_bundle, example_clips, own_ray):
    """SIGTERM mid-run: exit 130 within seconds, none of the processes of the Ray it started left."""
    import sys
    import time

    files = [str(example_clips[0])] * 40  # minutes of work on the tiny bundle: still running when signalled
    command = [sys.executable, "-m", "spokenlm.cli", "run", "--ray", "--model", str(tiny_bundle), "--task", "asr",
               "--json", *files]  # fmt: skip
    proc = own_ray.popen(command)
    for line in proc.stderr:  # Ray's own log line, once connected; the handler is set again just after
        if "Started a local Ray instance" in line:
            break
    time.sleep(3)  # the stage actors are starting or running
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    assert own_ray.processes()
    out, _ = own_ray.interrupt(proc)
    assert out == ""


def test_the_compress_stage_reads_the_chunks_with_the_transcriber(tiny_bundle, tiny_whisper, example_clips, tmp_path):
    """The chunks carry their audio from the encoder stage to the compress stage, which reads them with
    the bundle's Whisper and judges both readings: readings and prompt transcripts are the in-process
    model's."""
    from pipelines.stages import CompressStage, EncoderStage, LoadedAudio
    from spokenlm.model import save_bundle, set_bundle_transcriber
    from spokenlm.transcriber import TranscriberConfig

    model = load_bundle(tiny_bundle)
    model.llm.prompt_transcript = True
    path = save_bundle(model, tmp_path / "hybrid")
    set_bundle_transcriber(path, TranscriberConfig(base=None, path=str(tiny_whisper["ct2_int8"]), cpu_threads=1,
                                                   ctc_weight=0.3, max_tokens_per_second=1000.0))  # fmt: skip
    waves = [load_audio(p) for p in example_clips]
    expected = load_bundle(path).encode_recordings(waves)
    assert expected.readings is not None and any(c.whisper != c.ctc for r in expected.readings for c in r)
    encoded = EncoderStage(str(path)).encode(*[LoadedAudio(wav=w, timing_ms={}) for w in waves])
    assert all(len(a) == len(b.items) for b in encoded.batches for a in [b.audio])
    speech = CompressStage(str(path)).compress(encoded)
    assert speech.readings == expected.readings and speech.prompt_texts == expected.prompt_texts
    assert all("transcriber" in t for t in speech.timing_ms)
