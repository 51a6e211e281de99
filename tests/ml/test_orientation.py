"""The facing classifier (ml.orientation): the shipped ONNX model, its probabilities, labels and scores."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ml import orientation
from ml.orientation import FACINGS, Facing, facing_predict, facings_from_logits, orientation_accuracy, read_labels
from tests.support import draw_car

ROOT = Path(__file__).resolve().parents[2]


def test_it_predicts_without_torch_or_django() -> None:
    code = (
        "import numpy as np, ml.orientation as o, sys; o.facing_predict(np.zeros((20, 40, 3), np.uint8)); "
        "assert not {'torch', 'django'} & set(sys.modules), 'torch or django was imported'"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def _photo(seed: int, size: tuple[int, int] = (240, 120)) -> np.ndarray:
    return np.asarray(draw_car(size, seed=seed))


def test_it_returns_one_of_four_facings_with_probabilities_that_sum_to_one() -> None:
    facing = facing_predict(_photo(1))
    assert isinstance(facing, Facing) and facing.label in FACINGS
    assert set(facing.probabilities) == set(FACINGS)
    assert sum(facing.probabilities.values()) == pytest.approx(1.0, abs=1e-6)
    assert facing.confidence == max(facing.probabilities.values())
    assert facing.mirrored == (facing.label == "right")


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_it_gives_a_mirrored_photo_the_mirrored_answer(seed: int) -> None:
    rgb = _photo(seed, (200 + 10 * seed, 100))
    facing, mirrored = facing_predict(rgb), facing_predict(np.ascontiguousarray(rgb[:, ::-1]))
    swap = {"left": "right", "right": "left", "front": "front", "rear": "rear"}
    for label in FACINGS:
        assert mirrored.probabilities[swap[label]] == pytest.approx(facing.probabilities[label], abs=1e-5)


def test_it_accepts_any_size_and_refuses_what_is_not_an_rgb_uint8_array() -> None:
    assert facing_predict(_photo(0, (37, 91))).label in FACINGS  # taller than wide: letterboxed
    for bad in (np.zeros((10, 20), np.uint8), np.zeros((10, 20, 4), np.uint8), np.zeros((10, 20, 3), np.float32)):
        with pytest.raises(ValueError, match=r"\[H, W, 3\] uint8"):
            facing_predict(bad)


def test_it_batches_like_one_at_a_time() -> None:
    photos = [_photo(seed) for seed in range(5)]
    classifier = orientation.default_classifier()
    one_by_one = [classifier.predict(p).probabilities["left"] for p in photos]
    batched = [f.probabilities["left"] for f in classifier.predict_batch(photos, batch=2)]
    assert batched == pytest.approx(one_by_one, abs=1e-5)


def test_it_combines_the_view_and_side_heads_into_four_probabilities() -> None:
    # Certain side view, even odds left/right; certain front view.
    side_view, front_view = facings_from_logits(np.array([0.0, 3.0]), np.array([[20.0, 0.0, 0.0], [0.0, 20.0, 0.0]]))
    assert side_view.probabilities["left"] == pytest.approx(0.5, abs=1e-6)
    assert side_view.probabilities["right"] == pytest.approx(0.5, abs=1e-6)
    assert front_view.label == "front" and front_view.confidence == pytest.approx(1.0, abs=1e-6)


def test_it_scores_left_right_rows_and_counts_head_on_rows_only_in_the_confusion() -> None:
    labels = {"a": "left", "b": "right", "c": "right", "d": "front", "e": "left"}
    predicted = {"a": "left", "b": "left", "c": "front", "d": "front"}  # "e" was not evaluated
    result = orientation_accuracy(predicted, labels)
    assert result["orientation_rows"] == 3 and result["orientation_accuracy"] == pytest.approx(1 / 3)
    assert result["facing_accuracy"] == pytest.approx(2 / 4)
    assert result["confusion"]["right"] == {"left": 1, "right": 0, "front": 1, "rear": 0}
    assert orientation_accuracy({}, labels)["orientation_accuracy"] is None


def test_it_reads_labels_and_refuses_an_unknown_facing(tmp_path: Path) -> None:
    good = tmp_path / "good.csv"
    good.write_text("file,facing,confidence\nsub/a.jpg,left,1.0\nb.jpg,rear,0.7\n")
    assert read_labels(good) == {"a.jpg": "left", "b.jpg": "rear"}
    bad = tmp_path / "bad.csv"
    bad.write_text("file,facing\na.jpg,sideways\n")
    with pytest.raises(ValueError, match="sideways"):
        read_labels(bad)


def test_the_shipped_classifier_records_its_held_out_accuracy_and_confusion() -> None:
    held_out = orientation.default_classifier().metadata["held_out"]
    confusion = held_out["confusion"]
    sides = sum(confusion[a][b] for a in ("left", "right") for b in FACINGS)
    assert held_out["orientation_rows"] == sides >= 200
    correct = confusion["left"]["left"] + confusion["right"]["right"]
    assert held_out["orientation_accuracy"] == pytest.approx(correct / sides)


def test_it_writes_every_photos_facing_and_hand_labels_win(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import csv
    import json

    folder = tmp_path / "photos"
    folder.mkdir()
    for seed in range(3):
        draw_car(seed=seed).save(folder / f"car_{seed}.png")
    labels = tmp_path / "labels.csv"
    labels.write_text("file,facing\ncar_1.png,rear\n")
    out = tmp_path / "facings.csv"
    assert orientation.main(["--data", str(folder), "--labels", str(labels), "--out", str(out)]) == 0
    rows = {row["file"]: row for row in csv.DictReader(out.open())}
    assert set(rows) == {"car_0.png", "car_1.png", "car_2.png"}
    assert rows["car_1.png"]["facing"] == "rear" and rows["car_1.png"]["source"] == "hand"
    assert {rows[n]["source"] for n in ("car_0.png", "car_2.png")} == {"model"}
    assert all(rows[n]["facing"] in FACINGS for n in rows)
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["photos"] == 3 and sum(summary["counts"].values()) == 3
