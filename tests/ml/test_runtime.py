import io
import json
import math
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from ml import runtime
from ml.preprocess import prepare

ROOT = Path(__file__).resolve().parents[2]


def _photo(size: tuple[int, int] = (64, 24), colour: tuple[int, int, int] = (200, 40, 40)) -> Image.Image:
    image = Image.new("RGB", size, (230, 230, 230))
    image.paste(colour, (size[0] // 6, size[1] // 3, size[0] * 5 // 6, size[1] - 2))
    return image


def test_it_imports_without_torch() -> None:
    code = "import ml.runtime, sys; assert 'torch' not in sys.modules, 'torch was imported'"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_it_reconstructs_a_photo_into_pictures_scores_and_a_latent(tiny_export: Any) -> None:
    model = runtime.load_model(tiny_export.model_dir)
    result = model.reconstruct(_photo((64, 16)))  # 4:1 in a 2:1 frame: bars above and below
    assert result.model_input.mode == result.reconstruction.mode == "RGB"
    assert result.model_input.size == result.reconstruction.size == (32, 8)
    assert result.latent.shape == (8,) and result.latent.dtype == np.float32
    scores = result.scores
    assert scores.psnr == pytest.approx(10 * math.log10(1 / scores.mse))
    assert -1 <= scores.ssim <= 1 and scores.kl >= 0
    assert 0 <= scores.car_likeness <= 1
    assert set(scores.to_dict()) == {"mse", "psnr", "ssim", "kl", "car_likeness"}
    assert json.loads(json.dumps(scores.to_dict())) == scores.to_dict()


def test_it_takes_a_path_a_file_object_bytes_or_a_picture_alike(tiny_export: Any, tmp_path: Path) -> None:
    model = runtime.load_model(tiny_export.model_dir)
    path = tmp_path / "car.png"
    _photo().save(path)
    with open(path, "rb") as handle:
        from_file = model.encode(handle)
    for source in (path, str(path), path.read_bytes(), Image.open(path)):
        assert np.array_equal(model.encode(source), from_file)
    assert np.array_equal(model.reconstruct(path).latent, from_file)


def test_it_encodes_to_the_posterior_mean_and_decodes_a_full_frame(tiny_export: Any) -> None:
    model = runtime.load_model(tiny_export.model_dir)
    photo = _photo()
    x = prepare(photo, model.config).array[None]
    mu, _ = model.encode_array(x)
    assert np.array_equal(model.encode(photo), mu[0])
    picture = model.decode(mu[0])
    assert picture.size == (32, 16) and picture.mode == "RGB"
    with pytest.raises(ValueError, match="8 numbers"):
        model.decode(np.zeros(5))


@pytest.mark.parametrize(
    ("data", "message"),
    [(b"definitely not an image", "This file is text, not a photo"), (b"", r"The file is empty \(0 bytes\)")],
)
def test_it_raises_an_image_error_for_undecodable_input(tiny_export: Any, data: bytes, message: str) -> None:
    model = runtime.load_model(tiny_export.model_dir)
    with pytest.raises(runtime.ImageError, match=message) as caught:
        model.reconstruct(io.BytesIO(data))
    assert isinstance(caught.value, ValueError)


def test_it_raises_an_image_error_for_a_truncated_photo(tiny_export: Any) -> None:
    buffer = io.BytesIO()
    Image.effect_noise((64, 32), 40).convert("RGB").save(buffer, "JPEG")
    with pytest.raises(runtime.ImageError, match="damaged or cut short"):
        runtime.load_model(tiny_export.model_dir).score(buffer.getvalue()[:300])


def test_it_loads_a_model_once_per_directory_and_reloads_after_a_new_export(tiny_export: Any, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_export.model_dir, copy)
    first = runtime.load_model(copy)
    assert runtime.load_model(Path(str(copy) + "/")) is first
    assert runtime.load_model(tmp_path / "." / "copy") is first
    metadata = copy / "metadata.json"
    two_threads = runtime.load_model(copy, threads=2)
    assert two_threads is not first and runtime.load_model(copy) is first
    os.utime(metadata, ns=(metadata.stat().st_atime_ns, metadata.stat().st_mtime_ns + 10**9))
    assert runtime.load_model(copy) is not first
    mtimes = {key[1] for key in runtime._cache if key[0] == str(copy.resolve())}
    assert mtimes == {metadata.stat().st_mtime_ns}


def test_it_uses_one_thread_unless_told_otherwise(tiny_export: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(runtime.THREADS_ENV, raising=False)
    assert runtime.load_model(tiny_export.model_dir).threads == 1
    monkeypatch.setenv(runtime.THREADS_ENV, "2")
    assert runtime.load_model(tiny_export.model_dir).threads == 2
    assert runtime.load_model(tiny_export.model_dir, threads=3).threads == 3
    monkeypatch.setenv(runtime.THREADS_ENV, "two")
    with pytest.raises(ValueError, match=runtime.THREADS_ENV):
        runtime.load_model(tiny_export.model_dir)


def test_it_reports_a_missing_model_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no exported model"):
        runtime.load_model(tmp_path)


def test_it_gives_the_same_answers_from_many_threads(tiny_export: Any) -> None:
    model = runtime.load_model(tiny_export.model_dir)
    photos = [_photo(colour=(40 * i, 200 - 30 * i, 90)) for i in range(4)]
    expected = [model.reconstruct(p).latent for p in photos]
    results: dict[int, list[np.ndarray]] = {}

    def work(index: int) -> None:
        results[index] = [model.reconstruct(p).latent for p in photos]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(np.array_equal(a, b) for got in results.values() for a, b in zip(got, expected, strict=True))


def test_it_scores_only_the_pixels_inside_the_box() -> None:
    target = np.full((3, 8, 16), 0.5, np.float32)
    recon = target.copy()
    recon[:, :2] = 1.0  # rows 0-1 are letterbox bars here
    recon[:, 2:, :] += 0.1
    scores = runtime.scores_from_arrays(target, recon, (0, 2, 16, 8), np.zeros(4), np.zeros(4))
    assert scores.mse == pytest.approx(0.01)
    assert scores.kl == 0.0
    assert scores.car_likeness is None


def test_it_computes_kl_against_a_hand_computation() -> None:
    mu = np.array([1.0, -2.0])
    logvar = np.array([0.0, math.log(4.0)])
    # 1/2 * sum(mu^2 + sigma^2 - 1 - log sigma^2) = 1/2 * ((1 + 1 - 1 - 0) + (4 + 4 - 1 - log 4))
    assert runtime.kl_divergence(mu, logvar) == pytest.approx(0.5 * (1 + 7 - math.log(4)))


def test_it_computes_ssim_of_one_window_by_hand() -> None:
    rng = np.random.default_rng(0)
    a = rng.random((1, 11, 11))
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1)
    g = np.exp(-((np.arange(11) - 5) ** 2) / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    mu_a, mu_b = (w * a[0]).sum(), (w * b[0]).sum()
    var_a = (w * (a[0] - mu_a) ** 2).sum()
    var_b = (w * (b[0] - mu_b) ** 2).sum()
    cov = (w * (a[0] - mu_a) * (b[0] - mu_b)).sum()
    c1, c2 = 0.01**2, 0.03**2
    expected = (2 * mu_a * mu_b + c1) * (2 * cov + c2) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    assert runtime.ssim(a, b) == pytest.approx(expected, rel=1e-9)


def test_its_filter_reads_the_windows_sliding_window_view_reads() -> None:
    rng = np.random.default_rng(2)
    kernel = runtime._ssim_kernel(11)
    whole = rng.random((3, 70, 140))
    for image in (whole[:, :64, :128], whole[:, 3:50:2, 5:], np.ascontiguousarray(whole[:1, :11, :11])):
        rows = np.lib.stride_tricks.sliding_window_view(image, 11, axis=1) @ kernel
        expected = np.lib.stride_tricks.sliding_window_view(rows, 11, axis=2) @ kernel
        assert np.array_equal(runtime._filter_valid(image, kernel), expected)


def test_it_computes_ssim_on_odd_shapes() -> None:
    rng = np.random.default_rng(1)
    image = rng.random((3, 64, 128))
    assert runtime.ssim(image, image) == pytest.approx(1.0)
    assert runtime.ssim(image, 1 - image) < 0
    thin = rng.random((3, 2, 128))  # a 64:1 photo: narrower than the 11x11 window
    assert runtime.ssim(thin, thin) == pytest.approx(1.0)
    assert runtime.ssim(thin, np.clip(thin + 0.2, 0, 1)) < 1.0


def test_it_calls_a_typical_car_half_car_like_and_an_outlier_unlike() -> None:
    calibration = {
        "weights": {"logvar": 1.0},
        "features": {"logvar": {"mean": -4.0, "std": 0.5}, "kl": {"mean": 100, "std": 10}},
    }
    assert runtime.car_likeness({"logvar": -4.0, "kl": 0}, calibration) == pytest.approx(0.5)
    assert runtime.car_likeness({"logvar": -3.0, "kl": 0}, calibration) == pytest.approx(0.02275, abs=1e-4)
    assert runtime.car_likeness({"logvar": -5.0, "kl": 0}, calibration) == pytest.approx(0.97725, abs=1e-4)
    assert runtime.car_likeness({"logvar": -5.0}, None) is None


def test_it_measures_the_error_in_excess_of_a_16x16_thumbnail() -> None:
    flat = np.full((3, 32, 64), 0.25)
    assert runtime.thumbnail_mse(flat) < 1e-6  # a thumbnail keeps a flat picture
    stripes = np.zeros((3, 32, 64))
    stripes[:, :, ::2] = 1.0  # detail no 16x16 thumbnail keeps
    assert runtime.thumbnail_mse(stripes) > 0.2
    features = runtime.score_features(0.02, 50.0, np.zeros(4), thumb16_mse=0.01)
    assert features["excess_error_db"] == pytest.approx(10 * np.log10(2.0))
    assert "excess_error_db" not in runtime.score_features(0.02, 50.0, np.zeros(4))
    # Older calibrations (log-variance alone) still score with the same features.
    calibration = {"weights": {"logvar": 1.0}, "features": {"logvar": {"mean": 0.0, "std": 1.0}}}
    assert runtime.car_likeness(features, calibration) == pytest.approx(0.5)


def test_its_car_likeness_shortcut_matches_the_full_score(tiny_export: Any) -> None:
    model = runtime.load_model(tiny_export.model_dir)
    assert model.calibration is not None
    for path in sorted(Path(tiny_export.data_dir).iterdir())[:3]:
        assert model.car_likeness(path) == pytest.approx(model.score(path).car_likeness, abs=1e-12)


def test_an_int8_model_gives_each_row_of_a_batch_what_it_gives_alone() -> None:
    """Dynamic int8 scales activations per call: batched, a photo's result would depend on its neighbours."""
    from ml.runtime import DEFAULT_MODEL_DIR, Model

    model = Model(DEFAULT_MODEL_DIR)
    assert model.metadata["quantization"]["applied"]  # the shipped model is the int8 case
    rng = np.random.default_rng(0)
    z = rng.normal(size=(3, model.config.latent_dim)).astype(np.float32) * np.array([[0.2], [1.0], [3.0]], np.float32)
    batch = model.decode_array(z)
    for i in range(3):
        np.testing.assert_array_equal(batch[i], model.decode_array(z[i : i + 1])[0])
    x = rng.random((3, 3, model.config.height, model.config.width), dtype=np.float32)
    out = model.run(x)
    for i in range(3):
        alone = model.run(x[i : i + 1])
        np.testing.assert_array_equal(out.mu[i], alone.mu[0])
        np.testing.assert_array_equal(out.recon[i], alone.recon[0])
