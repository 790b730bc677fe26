"""Discrete speech units: k-means over encoder frames → unit ids, run-length dedup, units per second.

The recipe of HuBERT (Hsu et al., 2021, §II-A, k-means targets) and of the "textless" unit LMs:
cluster the frames of one encoder layer with k-means; a frame's unit is its nearest centroid;
consecutive repeats collapse into one unit ("dedup"), which turns 50 Hz frames into a sequence whose
rate says how much the units compress. DinoSR (Liu et al., 2023, §2.2) keeps online codebooks of
the same shape, (V, D) codewords over instance-normalised teacher layers; ``as_dinosr_init`` hands it
a fitted codebook as a starting point.

This file holds:
- ``KMeansConfig`` (what to fit) and ``fit_codebook`` (faiss k-means over valid frames only);
- ``UnitCodebook``: centroids (K, D) and ``assign`` (exact nearest-centroid search, faiss IndexFlatL2);
- ``dedup`` → ``UnitRuns``, ``units_per_second``;
- ``save_codebook`` / ``load_codebook`` (safetensors + JSON, never pickle); ``as_dinosr_init``.

faiss is imported only inside the functions that need it (it is not a core dependency).
Not here: training DinoSR (``spokenlm/encoders/dinosr.py``) or a unit language model.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple, overload

import numpy as np
import torch
from torch import Tensor

from spokenlm.encoders.base import EncoderOutput

CODEBOOK_FORMAT_VERSION = 1
_JSON_NAME = "codebook.json"
_WEIGHTS_NAME = "codebook.safetensors"

# KMeansConfig.init -> the faiss constant's name (faiss is imported only when fitting)
_FAISS_INIT = {"kmeans++": "ClusteringInitMethod_KMEANS_PLUS_PLUS", "random": "ClusteringInitMethod_RANDOM"}

Frames = Tensor | EncoderOutput  # (N, D) frames, all valid; or a batch whose padding is dropped


# ----------------------------------------------------------------------------------------------
# Config


@dataclass(frozen=True, kw_only=True)
class KMeansConfig:
    """How to fit a unit codebook (not where the frames come from)."""

    num_units: int = 100
    """K, the number of centroids (units). At least 2, and at most the number of frames fitted."""

    niter: int = 20
    """Lloyd iterations of faiss k-means."""

    init: Literal["kmeans++", "random"] = "kmeans++"
    """Initial centroids: k-means++ (D²-weighted sampling; rarely leaves a cluster without a
    centroid) or faiss's default of K frames drawn at random."""

    nredo: int = 1
    """Run k-means this many times from different initialisations and keep the lowest objective."""

    seed: int = 0
    """Seeds faiss's centroid initialisation and the frame subsample: same frames + seed → same codebook."""

    max_frames: int | None = 100_000
    """Fit on at most this many valid frames, drawn uniformly without replacement; None = all.
    faiss's own subsampling (256 points per centroid by default) is turned off: this is the only one."""

    layer: int | None = None
    """Which hidden state of an ``EncoderOutput`` to cluster (an index into ``hidden_states``, as
    HuBERT clusters a middle layer); None = ``features``. The codebook remembers it, so ``assign``
    reads the same layer."""

    instance_norm: bool = False
    """Normalise each utterance's frames per channel over its valid frames (zero mean, unit variance)
    before clustering, as DinoSR normalises its teacher layers; ``assign`` does the same. A plain
    (T, D) tensor counts as one utterance."""

    def validate(self) -> None:
        if not _is_int(self.num_units) or self.num_units < 2:
            raise ValueError(f"KMeansConfig.num_units must be an int >= 2, got {self.num_units!r}")
        if not _is_int(self.niter) or self.niter < 1:
            raise ValueError(f"KMeansConfig.niter must be an int >= 1, got {self.niter!r}")
        if self.init not in ("kmeans++", "random"):
            raise ValueError(f"KMeansConfig.init must be 'kmeans++' or 'random', got {self.init!r}")
        if not _is_int(self.nredo) or self.nredo < 1:
            raise ValueError(f"KMeansConfig.nredo must be an int >= 1, got {self.nredo!r}")
        if not _is_int(self.seed) or not 0 <= self.seed < 2**31:
            raise ValueError(f"KMeansConfig.seed must be an int in [0, 2**31), got {self.seed!r}")
        if self.max_frames is not None and (not _is_int(self.max_frames) or self.max_frames < self.num_units):
            raise ValueError(
                f"KMeansConfig.max_frames must be None or an int >= num_units ({self.num_units}), "
                f"got {self.max_frames!r}"
            )
        if self.layer is not None and (not _is_int(self.layer) or self.layer < 0):
            raise ValueError(f"KMeansConfig.layer must be None or an int >= 0, got {self.layer!r}")
        if not isinstance(self.instance_norm, bool):
            raise ValueError(f"KMeansConfig.instance_norm must be a bool, got {self.instance_norm!r}")


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


# ----------------------------------------------------------------------------------------------
# The codebook


class UnitRuns(NamedTuple):
    """A unit sequence after run-length dedup: ``units[i]`` repeated ``run_lengths[i]`` times."""

    units: Tensor  # (N,) int64, no two neighbours equal
    run_lengths: Tensor  # (N,) int64, >= 1, sums to the frame count


@dataclass(frozen=True, eq=False)
class UnitCodebook:
    """K centroids in an encoder's feature space; a frame's unit is the id of its nearest centroid
    (squared L2, exact search)."""

    centroids: Tensor  # (K, D) float32, on CPU
    layer: int | None = None  # hidden_states index the frames came from; None = features
    instance_norm: bool = False  # frames were instance-normalised per utterance before clustering
    config: KMeansConfig | None = None  # how it was fitted; None for a codebook built by hand
    _index: Any = field(default=None, init=False, repr=False)  # faiss.IndexFlatL2, built on first use

    def __post_init__(self) -> None:
        c = self.centroids
        if not isinstance(c, Tensor) or c.ndim != 2 or not c.is_floating_point():
            shape = tuple(c.shape) if isinstance(c, Tensor) else type(c).__name__
            raise ValueError(f"centroids must be a (K, D) float tensor, got {shape}")
        if c.shape[0] < 2:
            raise ValueError(f"a codebook needs at least 2 centroids, got {c.shape[0]}")
        if c.shape[1] < 1:
            raise ValueError("centroids must have at least one dim, got D = 0")
        if not torch.isfinite(c).all():
            raise ValueError("centroids must be finite")
        if self.layer is not None and (not _is_int(self.layer) or self.layer < 0):
            raise ValueError(f"layer must be None or an int >= 0, got {self.layer!r}")
        object.__setattr__(self, "centroids", c.detach().to("cpu", torch.float32).contiguous())

    def __getstate__(self) -> dict[str, Any]:
        # the faiss index does not pickle (Ray ships codebooks to workers); it is rebuilt on first use
        return {k: v for k, v in self.__dict__.items() if k != "_index"} | {"_index": None}

    @property
    def num_units(self) -> int:
        return self.centroids.shape[0]

    @property
    def dim(self) -> int:
        return self.centroids.shape[1]

    @overload
    def assign(self, features: Tensor) -> Tensor: ...
    @overload
    def assign(self, features: EncoderOutput) -> list[Tensor]: ...

    def assign(self, features: Tensor | EncoderOutput) -> Tensor | list[Tensor]:
        """Unit ids of every frame.

        (T, D) tensor → (T,) int64 (one utterance, every frame valid). ``EncoderOutput`` → a list
        with one (T_i,) int64 tensor per item, covering its ``lengths[i]`` valid frames only, read
        from the codebook's ``layer``. Ids live on CPU.
        """
        if isinstance(features, EncoderOutput):
            return [self._search(x) for x in _utterances(features, self.layer, self.instance_norm)]
        x = _check_frames(features)
        if self.instance_norm:
            x = _instance_norm(x)
        return self._search(x)

    def _search(self, x: Tensor) -> Tensor:
        if x.shape[1] != self.dim:
            raise ValueError(f"features have dim {x.shape[1]} but the codebook's centroids have dim {self.dim}")
        if x.shape[0] == 0:
            return torch.zeros(0, dtype=torch.long)
        if self._index is None:
            import faiss

            index = faiss.IndexFlatL2(self.dim)
            index.add(self.centroids.numpy())
            object.__setattr__(self, "_index", index)
        _, ids = self._index.search(_as_numpy(x), 1)  # (T, 1) nearest centroid
        return torch.from_numpy(ids[:, 0].astype(np.int64))


def fit_codebook(frames: Frames | Iterable[Frames], config: KMeansConfig) -> UnitCodebook:
    """Cluster the valid frames of ``frames`` into ``config.num_units`` units with faiss k-means.

    ``frames``: a (N, D) tensor (every row a frame), an ``EncoderOutput`` (only frames below
    ``lengths`` are used, read from ``config.layer``), or an iterable of either (e.g. one
    ``EncoderOutput`` per batch of a dataset). A (B, T, D) tensor is refused: its padding is unknown.
    """
    import faiss

    config.validate()
    items = [frames] if isinstance(frames, (Tensor, EncoderOutput)) else list(frames)
    chunks: list[Tensor] = []
    for item in items:
        if isinstance(item, EncoderOutput):
            chunks.extend(_utterances(item, config.layer, config.instance_norm))
        elif isinstance(item, Tensor):
            x = _check_frames(item)
            chunks.append(_instance_norm(x) if config.instance_norm else x)
        else:
            raise ValueError(f"frames must be tensors or EncoderOutputs, got {type(item).__name__}")
    dims = sorted({x.shape[1] for x in chunks})
    if len(dims) > 1:
        raise ValueError(f"frames disagree on their dim: {dims}")
    x = torch.cat(chunks) if chunks else torch.zeros(0, 0)  # (N, D)

    if config.max_frames is not None and x.shape[0] > config.max_frames:
        g = torch.Generator().manual_seed(config.seed)
        x = x[torch.randperm(x.shape[0], generator=g)[: config.max_frames]]
    if config.num_units > x.shape[0]:
        raise ValueError(
            f"num_units={config.num_units} exceeds the {x.shape[0]} valid frames given; "
            "k-means needs at least one frame per unit"
        )
    kmeans = faiss.Kmeans(
        x.shape[1],
        config.num_units,
        niter=config.niter,
        nredo=config.nredo,
        seed=config.seed,
        init_method=getattr(faiss, _FAISS_INIT[config.init]),
        verbose=False,
        min_points_per_centroid=1,  # silence faiss's "please provide at least ..." warning
        max_points_per_centroid=x.shape[0],  # no second subsample inside faiss
    )
    kmeans.train(_as_numpy(x))
    return UnitCodebook(
        centroids=torch.from_numpy(np.array(kmeans.centroids, dtype=np.float32)),
        layer=config.layer,
        instance_norm=config.instance_norm,
        config=config,
    )


# ----------------------------------------------------------------------------------------------
# Unit sequences


def dedup(ids: Tensor) -> UnitRuns:
    """Run-length encode a (T,) id sequence: [5, 5, 2, 2, 2, 5] → units [5, 2, 5], runs [2, 3, 1]."""
    if not isinstance(ids, Tensor) or ids.ndim != 1:
        shape = tuple(ids.shape) if isinstance(ids, Tensor) else type(ids).__name__
        raise ValueError(f"ids must be a 1-D (T,) tensor, got {shape}")
    if ids.is_floating_point() or ids.is_complex():
        raise ValueError(f"ids must be integer unit ids, got dtype {ids.dtype}")
    units, counts = torch.unique_consecutive(ids.long(), return_counts=True)
    return UnitRuns(units=units, run_lengths=counts.long())


def units_per_second(ids: Tensor | Iterable[Tensor], frame_rate_hz: float) -> float:
    """Deduplicated units per second of audio: runs / (frames / frame_rate_hz).

    ``ids``: one (T,) sequence, or several (e.g. ``assign(EncoderOutput)``), pooled as
    total runs / total seconds. A 50 Hz sequence with no repeats gives 50.0.
    """
    if not frame_rate_hz > 0:
        raise ValueError(f"frame_rate_hz must be positive, got {frame_rate_hz!r}")
    sequences = [ids] if isinstance(ids, Tensor) else list(ids)
    runs = sum(len(dedup(s).units) for s in sequences)
    frames = sum(s.shape[0] for s in sequences)
    if frames == 0:
        raise ValueError("units_per_second needs at least one frame")
    return runs / (frames / frame_rate_hz)


# ----------------------------------------------------------------------------------------------
# Save / load / DinoSR


def save_codebook(codebook: UnitCodebook, path: str | Path) -> None:
    """Write ``codebook`` as a directory:

    DIR/codebook.safetensors  {"centroids": (K, D) float32}
    DIR/codebook.json         {"kind": "unit_codebook", "format_version", "num_units", "dim",
                               "layer", "instance_norm", "fit": KMeansConfig fields | null}; written last
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_file({"centroids": codebook.centroids}, str(path / _WEIGHTS_NAME), metadata={"format": "pt"})
    manifest = {
        "kind": "unit_codebook",
        "format_version": CODEBOOK_FORMAT_VERSION,
        "num_units": codebook.num_units,
        "dim": codebook.dim,
        "layer": codebook.layer,
        "instance_norm": codebook.instance_norm,
        "fit": None if codebook.config is None else asdict(codebook.config),
    }
    (path / _JSON_NAME).write_text(json.dumps(manifest, indent=2) + "\n")


def load_codebook(path: str | Path) -> UnitCodebook:
    """Read a directory written by ``save_codebook``; checks its kind, version and shapes."""
    from safetensors.torch import load_file

    path = Path(path)
    manifest_path, weights_path = path / _JSON_NAME, path / _WEIGHTS_NAME
    for p in (manifest_path, weights_path):
        if not p.is_file():
            raise FileNotFoundError(f"{path} is not a unit codebook: {p.name} is missing")
    manifest = json.loads(manifest_path.read_text())
    if not isinstance(manifest, dict) or manifest.get("kind") != "unit_codebook":
        raise ValueError(f"{manifest_path} is not a unit codebook manifest")
    if manifest.get("format_version") != CODEBOOK_FORMAT_VERSION:
        raise ValueError(
            f"{manifest_path} has format_version {manifest.get('format_version')!r}; "
            f"this spokenlm reads {CODEBOOK_FORMAT_VERSION}"
        )
    tensors = load_file(str(weights_path))
    if set(tensors) != {"centroids"}:
        raise ValueError(f"{weights_path} must hold exactly 'centroids', got {sorted(tensors)}")
    centroids = tensors["centroids"]
    expected = (manifest.get("num_units"), manifest.get("dim"))
    if tuple(centroids.shape) != expected:
        raise ValueError(f"{weights_path} holds centroids of shape {tuple(centroids.shape)}, manifest says {expected}")
    fit = manifest.get("fit")
    try:
        config = None if fit is None else KMeansConfig(**fit)
    except TypeError as err:
        raise ValueError(f"{manifest_path} has an unreadable 'fit' entry: {err}") from err
    return UnitCodebook(
        centroids=centroids,
        layer=manifest.get("layer"),
        instance_norm=bool(manifest.get("instance_norm", False)),
        config=config,
    )


def as_dinosr_init(codebook: UnitCodebook, *, codebook_size: int | None = None, dim: int | None = None) -> Tensor:
    """The codebook's centroids as a fresh (V, D) float32 tensor to initialise one DinoSR codebook.

    DinoSR keeps one codebook of V codewords per top teacher layer and moves them by an EMA of the
    sums and counts of the (instance-normalised) teacher frames assigned to them, never by gradient;
    it starts from random codewords. Starting instead from k-means centroids of the same layer gives
    meaningful targets from step one. For the init to live in the right space, fit with
    ``KMeansConfig(layer=<that teacher layer>, instance_norm=True)`` on the teacher's features.
    Copy the result into the codeword buffer (and, if the EMA keeps running sums, start those sums
    at the codewords and the counts at 1 so the first update is a proper average).

    ``codebook_size`` / ``dim``, when given, must equal the DinoSR codebook's V and D. The result is
    a copy (no grad), so the caller may write it into a buffer in place.
    """
    k, d = codebook.centroids.shape
    if codebook_size is not None and codebook_size != k:
        raise ValueError(f"DinoSR codebook has {codebook_size} codewords but the unit codebook has {k} units")
    if dim is not None and dim != d:
        raise ValueError(f"DinoSR codebook has dim {dim} but the unit codebook's centroids have dim {d}")
    return codebook.centroids.detach().clone().to(torch.float32)


# ----------------------------------------------------------------------------------------------
# Frames


def _check_frames(x: Any) -> Tensor:
    if not isinstance(x, Tensor) or x.ndim != 2:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        hint = "; pass an EncoderOutput for a padded batch" if isinstance(x, Tensor) and x.ndim == 3 else ""
        raise ValueError(f"features must be (T, D) frames, got shape {shape}{hint}")
    if not x.is_floating_point():
        raise ValueError(f"features must be float, got dtype {x.dtype}")
    return x.detach().to("cpu", torch.float32)


def _utterances(encoded: EncoderOutput, layer: int | None, instance_norm: bool) -> list[Tensor]:
    """Valid frames of each item of a batch: [(T_i, D)] on CPU float32, padding dropped."""
    if layer is None:
        x = encoded.features  # (B, T, D)
    else:
        if encoded.hidden_states is None:
            raise ValueError(f"layer={layer} needs EncoderOutput.hidden_states, which is None")
        if layer >= encoded.hidden_states.shape[0]:
            raise ValueError(f"layer={layer} is out of range for {encoded.hidden_states.shape[0]} hidden states")
        x = encoded.hidden_states[layer]  # (B, T, D)
    x = x.detach().to("cpu", torch.float32)
    lengths = encoded.lengths.tolist()
    if len(lengths) != x.shape[0] or any(not 0 <= n <= x.shape[1] for n in lengths):
        raise ValueError(f"lengths {lengths} do not fit features of shape {tuple(x.shape)}")
    items = [x[b, :n] for b, n in enumerate(lengths)]
    return [_instance_norm(u) for u in items] if instance_norm else items


def _instance_norm(x: Tensor) -> Tensor:
    """(T, D) → per-channel zero mean, unit variance over time (F.instance_norm's eps, biased var)."""
    if x.shape[0] == 0:
        return x
    mean = x.mean(dim=0, keepdim=True)
    var = x.var(dim=0, unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-5)


def _as_numpy(x: Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.numpy(), dtype=np.float32)  # faiss wants C-contiguous float32
