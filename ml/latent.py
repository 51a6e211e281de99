"""Walking the VAE's latent space: interpolation, samples from the prior, principal directions, a 2-D map.

numpy only (no torch, no Django): the site, the Lambda bundle and ``ml.export`` share it.

- ``interpolate``: a walk between two latent means, spherical (default) or linear.
- ``prior_sample``: latents drawn from N(0, T^2 I), the same numbers for a seed on every machine.
- ``pca_fit`` / ``pca_coordinates`` / ``pca_move``: the principal components of the training set's
  latent means (stored in a model's metadata as ``latent_pca``), coordinates along them in standard
  deviations, and moving a latent along them (the site's sliders).
- ``map_fit`` / ``map_position``: a fixed 2-D projection (the first two principal components, scaled so
  that the training set spans [0, 1]), stored as ``latent_map`` so positions do not move between visits.

``python -m ml.latent --model ml/weights/default --data ../shared/data/cars`` adds both to an exported
model's ``metadata.json`` (the training split it names) without touching its ONNX files; ``ml.export``
computes them on every export.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

PCA_KEY = "latent_pca"
MAP_KEY = "latent_map"
# Components kept in the metadata: 16 x 128 numbers (~40 KB of JSON); the sliders use the first few.
PCA_COMPONENTS = 16
# The map's [0, 1] square spans these percentiles of the training set on each axis (outliers fall outside).
MAP_PERCENTILES = (1.0, 99.0)
METHODS = ("slerp", "lerp")
# Below this angle (radians) between two latents slerp's sin(omega) is too small to divide by: lerp instead.
SLERP_MIN_ANGLE = 1e-4
ENCODE_BATCH = 64


def lerp(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    """Linear interpolation ``(1 - t) a + t b`` of two latents ``[D]``; ``t`` in [0, 1]."""
    return (1.0 - t) * np.asarray(a, np.float64) + t * np.asarray(b, np.float64)


def slerp(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    """Spherical linear interpolation of two latents ``[D]`` (Shoemake 1985, as proposed for generative
    models by White, "Sampling Generative Networks", 2016):

        slerp(a, b; t) = sin((1 - t) omega) / sin(omega) a + sin(t omega) / sin(omega) b,  cos(omega) = a.b / |a||b|

    Under a Gaussian prior in D dimensions almost all the mass lies near the sphere of radius sqrt(D);
    a straight line between two points on it cuts through the low-norm middle (the blurred "average
    car"), the great-circle path stays at the endpoints' norm. Falls back to ``lerp`` for (nearly)
    parallel or zero vectors, where the formula divides by ~0.
    """
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    norms = np.linalg.norm(a) * np.linalg.norm(b)
    if norms == 0.0:
        return lerp(a, b, t)
    omega = float(np.arccos(np.clip(np.dot(a, b) / norms, -1.0, 1.0)))
    if omega < SLERP_MIN_ANGLE or np.pi - omega < SLERP_MIN_ANGLE:
        return lerp(a, b, t)
    return (np.sin((1.0 - t) * omega) * a + np.sin(t * omega) * b) / np.sin(omega)


def interpolate(a: np.ndarray, b: np.ndarray, steps: int, method: str = "slerp") -> np.ndarray:
    """``steps`` latents ``[steps, D]`` evenly spaced in t from ``a`` (first row) to ``b`` (last row).

    Raises ValueError for fewer than 2 steps, latents of different shapes or an unknown ``method``.
    """
    a = np.asarray(a, np.float64).reshape(-1)
    b = np.asarray(b, np.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"latents of different sizes: {a.size} and {b.size}")
    if steps < 2:
        raise ValueError(f"an interpolation needs at least 2 steps, got {steps}")
    if method not in METHODS:
        raise ValueError(f"unknown interpolation {method!r}; use one of {', '.join(METHODS)}")
    step = slerp if method == "slerp" else lerp
    return np.stack([step(a, b, t) for t in np.linspace(0.0, 1.0, steps)]).astype(np.float32)


def _standard_normal(seed: int, index: int, dim: int) -> np.ndarray:
    """``dim`` N(0, 1) numbers for (seed, index), identical under every numpy version.

    numpy guarantees the bit streams of SeedSequence + PCG64, not the output of its distribution
    methods (``Generator.standard_normal`` may change between releases; the Lambda stack runs numpy
    1.26). So: raw 64-bit words -> uniforms in (0, 1) from their top 53 bits -> Box-Muller
    (Box & Muller, 1958): z = sqrt(-2 ln u1) cos(2 pi u2), sqrt(-2 ln u1) sin(2 pi u2).
    """
    pairs = (dim + 1) // 2
    bits = np.random.PCG64(np.random.SeedSequence([seed, index])).random_raw(2 * pairs)
    uniform = ((bits >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53
    radius = np.sqrt(-2.0 * np.log(uniform[:pairs]))
    angle = 2.0 * np.pi * uniform[pairs:]
    return np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])[:dim]


def prior_sample(seed: int, count: int, dim: int, temperature: float = 1.0, start: int = 0) -> np.ndarray:
    """Latents ``[count, dim]`` float32 from the prior N(0, temperature^2 I): sample ``start + i`` of ``seed``.

    Each sample depends only on (seed, its index, dim) and is scaled by ``temperature`` (the standard
    deviation): the same link shows the same cars, asking for more cars never changes the first ones,
    and a lower temperature gives tamer cars with the same "shape". Raises ValueError for a negative
    seed, start or count, or a temperature that is not a finite number >= 0.
    """
    if seed < 0 or start < 0 or count < 0:
        raise ValueError("seed, start and count must be >= 0")
    if not np.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
    rows = [_standard_normal(seed, start + i, dim) for i in range(count)]
    return (np.stack(rows) * temperature if rows else np.zeros((0, dim))).astype(np.float32)


def pca_fit(latents: np.ndarray, components: int = PCA_COMPONENTS) -> dict[str, Any]:
    """Principal components of latent means ``[N, D]``, as stored in metadata under ``latent_pca``.

    Returns ``{"mean": [D], "components": [K][D] (unit vectors, orthogonal), "explained_variance": [K]
    (variance along each, in latent units squared), "explained_variance_ratio": [K] (share of the total
    variance), "total_variance", "n"}``, K = min(components, N, D). Computed by SVD of the centred
    data (sample variance, N - 1); each component's sign is fixed so that its largest loading is
    positive (as scikit-learn's ``svd_flip``), so refitting the same data gives the same directions.
    """
    data = np.asarray(latents, np.float64)
    if data.ndim != 2 or data.shape[0] < 2:
        raise ValueError(f"need latents [N >= 2, D], got shape {data.shape}")
    mean = data.mean(axis=0)
    _, singular, vt = np.linalg.svd(data - mean, full_matrices=False)
    k = min(components, vt.shape[0])
    vt = vt[:k]
    signs = np.sign(vt[np.arange(k), np.argmax(np.abs(vt), axis=1)])
    vt = vt * signs[:, None]
    variance = singular**2 / (data.shape[0] - 1)
    total = float(variance.sum())
    return {
        "mean": _rounded(mean),
        "components": [_rounded(row) for row in vt],
        "explained_variance": _rounded(variance[:k]),
        "explained_variance_ratio": _rounded(variance[:k] / total if total > 0 else np.zeros(k)),
        "total_variance": float(f"{total:.7g}"),
        "n": int(data.shape[0]),
    }


def _rounded(values: np.ndarray) -> list[float]:
    """7 significant digits: float32 precision, a third of the JSON of full doubles."""
    return [float(f"{v:.7g}") for v in np.asarray(values, np.float64)]


def _pca_arrays(pca: dict[str, Any], count: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    components = np.asarray(pca["components"], np.float64)[:count]
    std = np.sqrt(np.asarray(pca["explained_variance"], np.float64)[: len(components)])
    return np.asarray(pca["mean"], np.float64), components, np.maximum(std, 1e-12)


def pca_coordinates(latent: np.ndarray, pca: dict[str, Any], count: int | None = None) -> np.ndarray:
    """Where a latent ``[D]`` lies along the first ``count`` principal components, in standard
    deviations of the training set along each: ``(z - mean) . v_k / sigma_k``, shape ``[count]``."""
    mean, components, std = _pca_arrays(pca, count)
    return (components @ (np.asarray(latent, np.float64).reshape(-1) - mean)) / std


def pca_move(latent: np.ndarray, pca: dict[str, Any], coordinates: np.ndarray) -> np.ndarray:
    """The latent ``[D]`` moved so that its coordinates along the first ``len(coordinates)`` principal
    components (in standard deviations, see ``pca_coordinates``) become ``coordinates``; the part of
    the latent outside those directions is kept. Returns float32 ``[D]``."""
    target = np.asarray(coordinates, np.float64).reshape(-1)
    _, components, std = _pca_arrays(pca, len(target))
    if len(components) < len(target):
        raise ValueError(f"the model has {len(components)} principal directions, got {len(target)} coordinates")
    current = pca_coordinates(latent, pca, len(target))
    moved = np.asarray(latent, np.float64).reshape(-1) + ((target - current) * std) @ components
    return moved.astype(np.float32)


def map_fit(latents: np.ndarray, pca: dict[str, Any] | None = None) -> dict[str, Any]:
    """A fixed 2-D projection of latents ``[N, D]``, stored under ``latent_map``: the first two principal
    components (the plane that keeps the most of the training set's variance, so cars that differ
    most in their codes land far apart), with ``bounds`` [[lo, hi], [lo, hi]] the 1st and 99th
    percentile of the training set on each axis, which ``map_position`` maps to 0 and 1."""
    pca = pca or pca_fit(latents, components=2)
    mean = np.asarray(pca["mean"], np.float64)
    components = np.asarray(pca["components"], np.float64)[:2]
    projected = (np.asarray(latents, np.float64) - mean) @ components.T
    low, high = np.percentile(projected, MAP_PERCENTILES, axis=0)
    return {
        "method": "pca",
        "mean": pca["mean"],
        "components": [list(row) for row in pca["components"][:2]],
        "bounds": [[float(f"{low[i]:.7g}"), float(f"{high[i]:.7g}")] for i in range(2)],
        "percentiles": list(MAP_PERCENTILES),
        "n": len(projected),
    }


def map_position(latent: np.ndarray, projection: dict[str, Any]) -> tuple[float, float]:
    """``(x, y)`` of a latent ``[D]`` on the map: 0..1 across the training set's 1st..99th percentiles
    (values outside are possible for unusual cars; callers clip them for display)."""
    mean = np.asarray(projection["mean"], np.float64)
    components = np.asarray(projection["components"], np.float64)
    x, y = components @ (np.asarray(latent, np.float64).reshape(-1) - mean)
    (x_low, x_high), (y_low, y_high) = projection["bounds"]
    return float((x - x_low) / max(x_high - x_low, 1e-12)), float((y - y_low) / max(y_high - y_low, 1e-12))


def latent_space_fit(latents: np.ndarray, source: str) -> dict[str, Any]:
    """Both metadata entries, ``{"latent_pca": ..., "latent_map": ...}``, from the training split's
    latent means ``[N, D]``; ``source`` names the folder they came from."""
    pca = pca_fit(latents)
    return {
        PCA_KEY: {**pca, "split": "train", "source": source},
        MAP_KEY: {**map_fit(latents, pca), "split": "train", "source": source},
    }


def encode_pixels(model: Any, pixels: np.ndarray, batch: int = ENCODE_BATCH) -> np.ndarray:
    """Latent means ``[N, D]`` of uint8 model inputs ``[N, C, H, W]`` (an ``ml.data.ImageSet``'s
    ``pixels``) with ``model`` (an ``ml.runtime.Model``), ``batch`` images at a time."""
    rows = [
        model.encode_array(pixels[i : i + batch].astype(np.float32) / 255.0)[0] for i in range(0, len(pixels), batch)
    ]
    return np.concatenate(rows) if rows else np.zeros((0, model.config.latent_dim), np.float32)


def fit_model_dir(model_dir: Path, data_dir: Path) -> dict[str, Any]:
    """Encode the training split of ``data_dir`` (every image not among the metadata's ``val_names``)
    with the exported model in ``model_dir`` and write ``latent_pca`` and ``latent_map`` into its
    ``metadata.json`` (atomically; every other key is kept). Returns the two entries."""
    from ml import runtime
    from ml.data import list_images, load_images

    metadata_path = model_dir / runtime.METADATA_FILE
    metadata = json.loads(metadata_path.read_text())
    held_out = set((metadata.get("data") or {}).get("val_names") or [])
    files = [f for f in list_images(data_dir) if f.name not in held_out]
    model = runtime.Model(model_dir)
    images = load_images(files, model.config)
    if len(images) < 2:
        raise ValueError(f"fewer than 2 training images in {data_dir}")
    entries = latent_space_fit(encode_pixels(model, images.pixels), source=str(data_dir))
    metadata.update(entries)
    handle, tmp = tempfile.mkstemp(prefix=".metadata-", dir=model_dir)
    with os.fdopen(handle, "w") as out:
        out.write(json.dumps(metadata, indent=1) + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, metadata_path)
    return entries


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ml.latent",
        description="Add the latent principal components and the 2-D map to an exported model's metadata.json.",
    )
    parser.add_argument("--model", type=Path, default=Path("ml/weights/default"), help="exported model directory")
    parser.add_argument("--data", type=Path, required=True, help="the photos the model was trained on")
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        parser.error(f"no such folder: {args.data}")
    entries = fit_model_dir(args.model, args.data)
    pca = entries[PCA_KEY]
    print(
        json.dumps(
            {
                "model": str(args.model),
                "images": pca["n"],
                "explained_variance_ratio": pca["explained_variance_ratio"][:8],
                "first_8_components_share": round(sum(pca["explained_variance_ratio"][:8]), 4),
                "map_bounds": entries[MAP_KEY]["bounds"],
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
