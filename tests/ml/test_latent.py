"""ml/latent.py: interpolation, seeded prior samples, principal components, the 2-D map; and the
latent-space entries that ml.export and the committed default model's metadata carry."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ml import latent, runtime

ROOT = Path(__file__).resolve().parents[2]


def _cloud(n: int = 400, dim: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Points with standard deviations 5, 3, 1, 0.5, ... along a random orthonormal basis (returned)."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    scales = np.array([5.0, 3.0, 1.0] + [0.5] * (dim - 3))
    return rng.normal(size=(n, dim)) * scales @ basis.T + 2.0, basis.T


def test_it_imports_without_torch_or_django() -> None:
    code = "import ml.latent, sys; assert not {'torch', 'django'} & set(sys.modules), 'torch or django was imported'"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# --- Interpolation ------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", latent.METHODS)
def test_it_starts_and_ends_at_the_two_latents(method: str) -> None:
    a, b = np.array([1.0, 2.0, -1.0]), np.array([-3.0, 0.5, 2.0])
    path = latent.interpolate(a, b, 7, method)
    assert path.shape == (7, 3) and path.dtype == np.float32
    np.testing.assert_allclose(path[0], a, atol=1e-6)
    np.testing.assert_allclose(path[-1], b, atol=1e-6)


def test_it_keeps_the_norm_along_a_spherical_walk_and_not_along_a_straight_one() -> None:
    a = np.zeros(128)
    a[0] = 11.3
    b = np.zeros(128)
    b[1] = 11.3
    spherical = latent.interpolate(a, b, 9, "slerp")
    straight = latent.interpolate(a, b, 9, "lerp")
    np.testing.assert_allclose(np.linalg.norm(spherical, axis=1), 11.3, rtol=1e-5)
    assert np.linalg.norm(straight[4]) == pytest.approx(11.3 / np.sqrt(2), rel=1e-5)
    np.testing.assert_allclose(straight[4], (a + b) / 2, atol=1e-6)
    # Midway along the great circle: 45 degrees from each end.
    np.testing.assert_allclose(spherical[4][:2], [11.3 / np.sqrt(2)] * 2, rtol=1e-5)


def test_it_walks_straight_between_parallel_or_zero_latents() -> None:
    a = np.array([1.0, 1.0])
    np.testing.assert_allclose(latent.slerp(a, 2 * a, 0.5), 1.5 * a)
    np.testing.assert_allclose(latent.slerp(np.zeros(2), a, 0.25), 0.25 * a)
    np.testing.assert_allclose(latent.slerp(a, -a, 0.5), np.zeros(2), atol=1e-12)


def test_it_refuses_bad_interpolations() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        latent.interpolate(np.ones(3), np.ones(3), 1)
    with pytest.raises(ValueError, match="different sizes"):
        latent.interpolate(np.ones(3), np.ones(4), 5)
    with pytest.raises(ValueError, match="unknown interpolation"):
        latent.interpolate(np.ones(3), np.ones(3), 5, "cubic")


# --- Samples from the prior -----------------------------------------------------------------------------


def test_it_draws_the_same_cars_for_the_same_seed() -> None:
    first = latent.prior_sample(seed=42, count=6, dim=128)
    again = latent.prior_sample(seed=42, count=6, dim=128)
    other = latent.prior_sample(seed=43, count=6, dim=128)
    assert first.shape == (6, 128) and first.dtype == np.float32
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)
    assert len({row.tobytes() for row in first}) == 6  # six different cars


def test_it_draws_numbers_pinned_across_numpy_versions() -> None:
    # The same link must show the same cars on Lambda (numpy 1.26) and locally (numpy 2.x): the values
    # come from PCG64's bit stream, which numpy guarantees, and Box-Muller, which is ours.
    np.testing.assert_allclose(
        latent.prior_sample(seed=7, count=1, dim=4)[0], [0.15576835, 0.07226029, -0.95678526, 0.46010938], rtol=1e-5
    )


def test_it_keeps_earlier_cars_when_asked_for_more_and_scales_them_by_the_temperature() -> None:
    eight = latent.prior_sample(seed=5, count=8, dim=16)
    np.testing.assert_array_equal(latent.prior_sample(seed=5, count=3, dim=16), eight[:3])
    np.testing.assert_array_equal(latent.prior_sample(seed=5, count=2, dim=16, start=6), eight[6:])
    np.testing.assert_allclose(latent.prior_sample(seed=5, count=8, dim=16, temperature=0.5), eight * 0.5, rtol=1e-6)


def test_it_draws_from_a_standard_normal() -> None:
    values = latent.prior_sample(seed=1, count=200, dim=128).ravel()
    assert abs(values.mean()) < 0.02 and abs(values.std() - 1.0) < 0.02
    # Kurtosis 3 and the 2-sigma share of a normal (95.45%), not merely the right mean and spread.
    assert abs(np.mean(values**4) / np.mean(values**2) ** 2 - 3.0) < 0.1
    assert abs(np.mean(np.abs(values) < 2) - 0.9545) < 0.01


@pytest.mark.parametrize(("seed", "temperature"), [(-1, 1.0), (1, -0.5), (1, float("nan"))])
def test_it_refuses_bad_seeds_and_temperatures(seed: int, temperature: float) -> None:
    with pytest.raises(ValueError):
        latent.prior_sample(seed=seed, count=1, dim=4, temperature=temperature)


# --- Principal components and the map ------------------------------------------------------------------


def test_it_finds_the_directions_and_variances_of_a_known_cloud() -> None:
    points, basis = _cloud()
    pca = latent.pca_fit(points, components=3)
    components = np.array(pca["components"])
    assert components.shape == (3, 6) and pca["n"] == 400
    np.testing.assert_allclose(components @ components.T, np.eye(3), atol=1e-5)
    for found, true in zip(components, basis[:3], strict=True):
        assert abs(found @ true) > 0.99  # the same direction, up to the sign
        assert found[np.argmax(np.abs(found))] > 0  # the sign convention
    np.testing.assert_allclose(pca["explained_variance"], [25.0, 9.0, 1.0], rtol=0.2)
    ratios = pca["explained_variance_ratio"]
    assert ratios == sorted(ratios, reverse=True)
    assert sum(ratios) == pytest.approx((25 + 9 + 1) / (25 + 9 + 1 + 0.75), rel=0.05)
    np.testing.assert_allclose(pca["mean"], points.mean(axis=0), rtol=1e-6)


def test_it_moves_a_latent_along_the_components_in_standard_deviations() -> None:
    points, _ = _cloud()
    pca = latent.pca_fit(points, components=4)
    z = points[3]
    start = latent.pca_coordinates(z, pca, 3)
    target = start + np.array([2.0, 0.0, -1.0])
    moved = latent.pca_move(z, pca, target)
    np.testing.assert_allclose(latent.pca_coordinates(moved, pca, 3), target, atol=1e-4)
    # Two standard deviations along the first component: about 2 x 5 latent units, in that direction only.
    step = moved - z + np.array(pca["components"][2]) * np.sqrt(pca["explained_variance"][2])
    assert np.linalg.norm(step) == pytest.approx(2 * np.sqrt(pca["explained_variance"][0]), rel=1e-4)
    np.testing.assert_allclose(latent.pca_move(z, pca, start), z, atol=1e-4)
    with pytest.raises(ValueError, match="4 principal directions"):
        latent.pca_move(z, pca, np.zeros(5))


def test_it_places_the_training_set_in_the_unit_square_and_keeps_neighbours_near() -> None:
    points, _ = _cloud(n=1000)
    projection = latent.map_fit(points)
    positions = np.array([latent.map_position(p, projection) for p in points])
    inside = np.all((positions >= 0) & (positions <= 1), axis=1).mean()
    assert 0.95 < inside < 0.99  # 1st..99th percentile on each axis
    near = latent.map_position(points[0] + 0.01, projection)
    assert np.hypot(*(np.array(near) - positions[0])) < 0.01
    centre = latent.map_position(np.array(projection["mean"]), projection)
    assert 0.4 < centre[0] < 0.6 and 0.4 < centre[1] < 0.6


def test_it_stores_json_numbers_only() -> None:
    points, _ = _cloud(n=50)
    entries = latent.latent_space_fit(points, source="cars")
    assert json.loads(json.dumps(entries)) == entries
    assert entries["latent_pca"]["split"] == "train" and entries["latent_map"]["method"] == "pca"


# --- The metadata that export writes and the default model ships ----------------------------------------


def test_it_is_computed_at_export_on_the_training_split(tiny_export: Any) -> None:
    metadata = runtime.load_model(tiny_export.model_dir).metadata
    pca = metadata["latent_pca"]
    train_count = 8 - len(tiny_export.val_names)
    assert pca["n"] == train_count and metadata["latent_map"]["n"] == train_count
    assert np.array(pca["components"]).shape[1] == tiny_export.config.model.latent_dim
    assert len(pca["explained_variance"]) == len(pca["components"]) == min(train_count, 8)


def test_it_ships_the_latent_space_of_the_default_model() -> None:
    metadata = json.loads((runtime.DEFAULT_MODEL_DIR / runtime.METADATA_FILE).read_text())
    pca, projection = metadata["latent_pca"], metadata["latent_map"]
    dim = metadata["model"]["latent_dim"]
    assert pca["n"] == metadata["data"]["train"] == projection["n"]
    assert pca["source"] == metadata["data"]["source"] and pca["split"] == "train"
    components = np.array(pca["components"])
    assert components.shape == (latent.PCA_COMPONENTS, dim)
    np.testing.assert_allclose(components @ components.T, np.eye(latent.PCA_COMPONENTS), atol=1e-4)
    ratios = pca["explained_variance_ratio"]
    assert ratios == sorted(ratios, reverse=True) and 0 < sum(ratios) <= 1
    np.testing.assert_allclose(projection["components"], pca["components"][:2])
    (x_low, x_high), (y_low, y_high) = projection["bounds"]
    assert x_low < 0 < x_high and y_low < 0 < y_high
