"""Shared fixtures: a tiny untrained bundle built once per test session, the example clips, a
runner for the Serve app (the serve tests and the UI's API-mode tests talk to the real one), and a Ray
temp dir of a test's own, to find every process of a Ray that a command under test started.

serve/ is not importable from the tests' rootdir by default, so the repository root goes on sys.path
here and, through serve.app.start_ray, on the Ray workers' PYTHONPATH.
"""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_CLIPS = sorted((REPO / "examples").glob("*.wav"))
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_app(model_dir: Path, name: str, **settings):
    """Start Ray and Serve, deploy the spokenlm app with `settings`, yield its base URL; tear all down."""
    pytest.importorskip("ray.serve")
    import ray
    from ray import serve

    from serve.app import build_app, start_ray

    started = start_ray(num_cpus=2, log_to_driver=False)
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app({"model_dir": str(model_dir), **settings}), name=name, route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        if started:
            ray.shutdown()


@pytest.fixture(scope="session")
def serve_app():
    """The `running_app` context manager, for the module-scoped fixtures of the test modules."""
    return running_app


class OwnRay:
    """A Ray temp dir for a command run as a subprocess: the Ray it starts keeps its sockets, logs and
    session under it, so every process of that Ray (raylet, GCS, dashboard and runtime-env agents,
    workers) carries the dir on its command line, and a test tells them from any other Ray here."""

    def __init__(self, temp_dir: str):
        self.temp_dir = temp_dir
        self.env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_TMPDIR": temp_dir}
        self.commands: list[subprocess.Popen] = []

    def popen(self, command: list[str]) -> subprocess.Popen:
        """`command` started with this Ray's environment, text pipes; killed after the test if still up."""
        proc = subprocess.Popen(command, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.commands.append(proc)
        return proc

    def interrupt(self, proc: subprocess.Popen) -> tuple[str, str]:
        """SIGTERM `proc` and check what a spokenlm command owes a scheduler's stop: exit 130 within
        30 s, "spokenlm: interrupted" last on stderr, and no process of its Ray left. Its stdout and
        stderr."""
        proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        out, err = proc.communicate(timeout=120)
        stopped_s = time.monotonic() - sent
        assert proc.returncode == 130, err[-2000:]
        assert err.endswith("spokenlm: interrupted\n"), err[-2000:]
        assert stopped_s < 30, f"took {stopped_s:.1f} s to stop"
        assert self.left_after(15) == []
        return out, err

    def processes(self) -> list[int]:
        """Pids of the processes whose command line names the temp dir."""
        found = []
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                if self.temp_dir.encode() in cmdline.read_bytes():
                    found.append(int(cmdline.parent.name))
            except OSError:  # the process ended meanwhile
                pass
        return found

    def left_after(self, seconds: float) -> list[bytes]:
        """The command lines of its processes still running after up to `seconds` (they may take a
        moment to exit once told to)."""
        end = time.monotonic() + seconds
        while (left := self.processes()) and time.monotonic() < end:
            time.sleep(0.5)
        return [Path(f"/proc/{pid}/cmdline").read_bytes()[:200] for pid in left if Path(f"/proc/{pid}").exists()]


@pytest.fixture
def own_ray():
    """An `OwnRay`; afterwards its commands still running and whatever of that Ray is left (a failed
    shutdown) are killed, nothing else."""
    if not Path("/proc").is_dir():
        pytest.skip("lists processes through /proc")
    ray = OwnRay(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: Ray's unix socket paths live under it
    yield ray
    for proc in ray.commands:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    for pid in ray.processes():
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    shutil.rmtree(ray.temp_dir, ignore_errors=True)


@pytest.fixture(autouse=True, scope="session")
def no_ray_left_running():
    """Each test module starts (and ends) the Ray it needs; a Ray still up at the end of the session is
    shut down here rather than at interpreter exit, where its threads outlive the objects they use."""
    yield
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Test models are tiny: they gain nothing from intra-op threads, and on a shared 2-core machine
    (CI, or a developer's box while a recipe trains) contention makes them up to 10x slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    from spokenlm.demo import build_untrained_bundle

    return build_untrained_bundle(tmp_path_factory.mktemp("bundle") / "tiny")


@pytest.fixture(scope="module")
def hybrid_bundle(tiny_bundle, tmp_path_factory) -> Path:
    """The tiny bundle with an LLM that reads a transcript in its prompt (the hybrid prompt). Module
    scope: a module may change it in place (`spokenlm bundle set`), never another module's."""
    from spokenlm.model import load_bundle, save_bundle

    model = load_bundle(tiny_bundle)
    model.llm.prompt_transcript = True
    return save_bundle(model, tmp_path_factory.mktemp("hybrid") / "bundle")


@pytest.fixture(scope="session")
def example_clips() -> list[Path]:
    assert EXAMPLE_CLIPS, "examples/*.wav are part of the repository"
    return EXAMPLE_CLIPS


@pytest.fixture(scope="session")
def tiny_whisper(tmp_path_factory) -> dict[str, Path]:
    """A tiny random Whisper (vocabulary 64, width 16) with its tokenizer and a Whisper-style generation
    config, as save_pretrained writes it ("hf"), and ctranslate2's own conversions of it with the
    tokenizer copied in ("ct2_float32", "ct2_int8": what faster-whisper runs). Token ids: 0-25 a-z,
    26 space, 27 <|endoftext|>, 28 <|startoftranscript|>, 29 <|en|>, ..., 35 <|notimestamps|>."""
    return _tiny_whisper(tmp_path_factory.mktemp("tiny-whisper"), vocab_size=64)


@pytest.fixture(scope="session")
def tiny_whisper_timestamps(tmp_path_factory) -> dict[str, Path]:
    """`tiny_whisper` with a vocabulary that holds Whisper's 1501 timestamp tokens (ids 36-1536:
    <|0.00|> ... <|30.00|>), for decoding with timestamps."""
    return _tiny_whisper(tmp_path_factory.mktemp("tiny-whisper-timestamps"), vocab_size=1537)


def _tiny_whisper(root: Path, vocab_size: int) -> dict[str, Path]:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GenerationConfig, PreTrainedTokenizerFast, WhisperConfig, WhisperForConditionalGeneration

    ctranslate2 = pytest.importorskip("ctranslate2")
    specials = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|translate|>", "<|transcribe|>",
                "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]  # fmt: skip
    tok = Tokenizer(models.WordLevel(vocab={c: i for i, c in enumerate("abcdefghijklmnopqrstuvwxyz ")}, unk_token="a"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    PreTrainedTokenizerFast(
        tokenizer_object=tok, additional_special_tokens=specials, eos_token="<|endoftext|>", unk_token="a"
    ).save_pretrained(root / "hf")
    config = WhisperConfig(
        vocab_size=vocab_size, d_model=16, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
        max_target_positions=448,  # as every released Whisper: faster-whisper decodes up to 448 positions
        decoder_start_token_id=28, eos_token_id=27, pad_token_id=27, bos_token_id=27,
    )  # fmt: skip
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config)
    for p in model.parameters():  # larger than HF's init, so the audio visibly changes the output
        p.data.normal_(0, 0.2)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=28, eos_token_id=27, pad_token_id=27, bos_token_id=27, max_length=448,
        no_timestamps_token_id=35, is_multilingual=False, suppress_tokens=[25], begin_suppress_tokens=[8, 27],
    )  # fmt: skip
    model.save_pretrained(root / "hf", safe_serialization=True)
    dirs = {"hf": root / "hf"}
    for quantization in ("float32", "int8"):
        out = root / f"ct2_{quantization}"
        converter = ctranslate2.converters.TransformersConverter(str(root / "hf"), copy_files=["tokenizer.json"])
        converter.convert(str(out), quantization=quantization, force=True)
        dirs[f"ct2_{quantization}"] = out
    return dirs
