import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ml import evaluate
from ml.data import list_images


def test_it_evaluates_a_folder_with_baselines_and_ood_auroc(tiny_export: Any) -> None:
    files = list_images(tiny_export.data_dir)
    result = evaluate.evaluate(tiny_export.model_dir, files, list_images(tiny_export.noncar_dir))
    assert result["n"] == 8 and result["skipped"] == 0 and result["n_noncars"] == 4
    for key in ("psnr", "ssim", "mse", "kl", "baseline_mean_psnr", "baseline_thumb8_psnr", "baseline_thumb16_psnr"):
        assert np.isfinite(result[key]), key
    assert 0 <= result["ood_auroc"] <= 1
    assert set(result["ood_auroc_by_feature"]) == {"log_mse", "kl", "logvar", "excess_error_db"}
    # car_likeness ranks images by the error in excess of a 16x16 thumbnail alone (SCORE_WEIGHTS).
    assert result["ood_auroc"] == result["ood_auroc_by_feature"]["excess_error_db"]
    assert 0 <= result["same_car_top1"] <= 1 and 0 <= result["orientation_agreement"] <= 1
    assert result["colour_error"] >= 0
    # Flat blocks of colour: a 16x16 thumbnail keeps them better than an 8x8 one.
    assert result["baseline_thumb16_psnr"] > result["baseline_thumb8_psnr"]


def test_it_skips_undecodable_files_and_counts_them(tiny_export: Any, tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really")
    result = evaluate.evaluate(tiny_export.model_dir, [*list_images(tiny_export.data_dir)[:2], broken])
    assert result["n"] == 2 and result["skipped"] == 1


def test_it_reproduces_the_validation_metrics_recorded_at_export(
    tiny_export: Any, capsys: pytest.CaptureFixture
) -> None:
    args = ["--model", str(tiny_export.model_dir), "--data", str(tiny_export.data_dir), "--held-out", "--no-search"]
    assert evaluate.main(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    result = json.loads(lines[-1])
    assert lines[0].endswith("3 images (0 unreadable)") and "16x16 thumb" in lines[-3] and "same car" in lines[-2]
    recorded = evaluate.runtime.load_model(tiny_export.model_dir).metadata["metrics"]
    assert result["n"] == 3
    for key in ("psnr", "ssim", "mse", "baseline_mean_psnr", "baseline_thumb16_psnr", "same_car_top1"):
        assert result[key] == pytest.approx(recorded[key], abs=1e-6)


def test_it_restricts_to_a_checkpoints_validation_images(tiny_export: Any, capsys: pytest.CaptureFixture) -> None:
    args = ["--model", str(tiny_export.model_dir), "--data", str(tiny_export.data_dir)]
    assert evaluate.main([*args, "--val-of", str(tiny_export.checkpoint)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["n"] == len(tiny_export.val_names)


def test_it_predicts_a_flat_target_perfectly_from_a_thumbnail() -> None:
    target = np.full((3, 20, 50), 0.4, np.float32)
    assert np.abs(evaluate.thumbnail_prediction(target, 8) - target).max() < 1 / 255


def test_it_keeps_more_detail_in_a_16x16_thumbnail_than_in_an_8x8_one() -> None:
    rows = np.linspace(0, 1, 40)[:, None] * np.sin(np.linspace(0, 12, 80))[None, :] * 0.5 + 0.5
    target = np.repeat(rows[None], 3, axis=0).astype(np.float32)
    err8 = np.mean((evaluate.thumbnail_prediction(target, 8) - target) ** 2)
    err16 = np.mean((evaluate.thumbnail_prediction(target, 16) - target) ** 2)
    assert evaluate.thumbnail_prediction(target, 8).shape == target.shape
    assert err16 < err8


@pytest.mark.parametrize(
    ("positives", "negatives", "expected"),
    [([3, 4, 5], [0, 1, 2], 1.0), ([0, 1], [2, 3], 0.0), ([1, 1], [1, 1], 0.5), ([1, 3], [2, 0], 0.75)],
)
def test_it_computes_auroc_like_mann_whitney(positives: list[float], negatives: list[float], expected: float) -> None:
    assert evaluate.auroc(positives, negatives) == pytest.approx(expected)


def test_it_calibrates_from_held_out_records() -> None:
    values = [(-4, 100, -3, 0.5), (-3, 120, -4, 1.5), (-5, 80, -5, 1.0)]
    records = [{"log_mse": m, "kl": k, "logvar": v, "excess_error_db": e} for m, k, v, e in values]
    calibration = evaluate.calibrate([*records, {"name": "x.jpg", "error": "unreadable"}])
    assert calibration["n"] == 3
    assert calibration["features"]["kl"] == {"mean": 100.0, "std": pytest.approx(20.0)}
    assert calibration["features"]["excess_error_db"] == {"mean": 1.0, "std": pytest.approx(0.5)}
    assert calibration["weights"] == evaluate.SCORE_WEIGHTS


def test_it_writes_a_grid_of_inputs_and_reconstructions(tiny_export: Any, tmp_path: Path, capsys) -> None:
    grid = tmp_path / "grid.png"
    args = ["--model", str(tiny_export.model_dir), "--data", str(tiny_export.data_dir), "--grid", str(grid)]
    assert evaluate.main(args) == 0
    from PIL import Image

    with Image.open(grid) as image:
        # 8 photos, one a row: photo with box and frame | what the model saw | reconstruction, 160 px cells.
        assert image.size == (3 * (160 + 8), 8 * (160 + 8))
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["n"] == 8


def _asymmetric_pictures(count: int, seed: int = 0) -> list[np.ndarray]:
    """[3, 16, 32] pictures, each a different colour with a block nearer its left edge."""
    rng = np.random.default_rng(seed)
    pictures = []
    for _ in range(count):
        picture = np.full((3, 16, 32), 0.9, dtype=np.float32)
        picture[:, 4:12, 2:14] = rng.random((3, 1, 1))
        picture[:, 6:10, 20:24] = rng.random((3, 1, 1))
        pictures.append(picture)
    return pictures


def test_it_recognises_the_same_car_when_the_reconstruction_is_faithful() -> None:
    pairs = evaluate.PairStore()
    for picture in _asymmetric_pictures(6):
        pairs.add(picture, picture + 0.01, (0, 2, 32, 14))
    measures = evaluate.same_car_measures(pairs)
    assert measures["same_car_top1"] == 1.0
    assert measures["orientation_agreement"] == 1.0
    assert measures["colour_error"] == pytest.approx(2.55, abs=0.01)


def test_it_counts_a_mirrored_or_swapped_reconstruction_as_a_miss() -> None:
    pictures = _asymmetric_pictures(5)
    mirrored = evaluate.PairStore()
    swapped = evaluate.PairStore()
    for i, picture in enumerate(pictures):
        mirrored.add(picture, picture[..., ::-1].copy(), (0, 0, 32, 16))
        swapped.add(picture, pictures[(i + 1) % len(pictures)], (0, 0, 32, 16))
    assert evaluate.same_car_measures(mirrored)["orientation_agreement"] == 0.0
    assert evaluate.same_car_measures(swapped)["same_car_top1"] == 0.0
    # Differences outside the box do not count.
    outside = evaluate.PairStore()
    for picture in pictures:
        noisy = picture.copy()
        noisy[:, :, :4] = 0.0
        outside.add(picture, noisy, (4, 0, 28, 16))
    assert evaluate.same_car_measures(outside) == {
        "same_car_top1": 1.0,
        "orientation_agreement": 1.0,
        "colour_error": 0.0,
    }


def test_it_scores_the_facing_classifier_on_the_labelled_side_views(
    tiny_export: Any, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from ml.orientation import facing_predict
    from ml.preprocess import open_image

    files = list_images(tiny_export.data_dir)
    predicted = [facing_predict(np.asarray(open_image(str(f)))).label for f in files[:4]]
    # Two rows labelled as predicted, one labelled the other way, one head-on (not counted); the rest unlabelled.
    other = {"left": "right", "right": "left", "front": "left", "rear": "left"}
    labels = [predicted[0], predicted[1], other[predicted[2]], "front"]
    side = [(p == lab) for p, lab in zip(predicted[:3], labels[:3], strict=True) if lab in ("left", "right")]
    csv = tmp_path / "labels.csv"
    csv.write_text("file,facing\n" + "".join(f"{f.name},{lab}\n" for f, lab in zip(files, labels, strict=False)))
    # --no-search: the classifier on each whole photo (searched, it sees the frame the site gives it).
    args = ["--model", str(tiny_export.model_dir), "--data", str(tiny_export.data_dir), "--no-search"]
    assert evaluate.main([*args, "--orientation-labels", str(csv)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["orientation_rows"] == len(side)
    assert result["orientation_accuracy"] == pytest.approx(sum(side) / len(side), abs=1e-4)
    assert sum(side) < len(side)  # the row labelled the other way is a miss
