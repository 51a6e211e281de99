"""ml.train_orientation's framed copies: photos pasted into other photos and cut to the shipped locator's frame."""

from pathlib import Path

import numpy as np
from PIL import Image

from ml import train_orientation
from tests.support import draw_car


def _folders(tmp_path: Path) -> tuple[Path, Path]:
    cars, scenes = tmp_path / "cars", tmp_path / "scenes"
    cars.mkdir()
    scenes.mkdir()
    for seed in range(2):
        draw_car(seed=seed).save(cars / f"car{seed}.jpg")
    for seed in range(4):
        pixels = np.random.default_rng(seed).integers(0, 256, (150, 200, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(scenes / f"scene{seed}.jpg")
    return cars, scenes


def test_framed_copies_are_seeded_classifier_inputs_named_after_their_photo(tmp_path: Path) -> None:
    cars, scenes = _folders(tmp_path)
    names = ["car0.jpg", "car1.jpg"]
    x, kept = train_orientation.framed_copies(names, [cars], scenes, 2, height=16, seed=1)
    assert x.shape == (4, 3, 16, 32) and x.dtype == np.float32
    assert x.min() >= 0.0 and x.max() <= 1.0
    assert kept == ["car0.jpg", "car0.jpg", "car1.jpg", "car1.jpg"]
    again, _ = train_orientation.framed_copies(names, [cars], scenes, 2, height=16, seed=1)
    np.testing.assert_array_equal(x, again)
    other, _ = train_orientation.framed_copies(names, [cars], scenes, 2, height=16, seed=2)
    assert not np.array_equal(x, other)


def test_measure_only_remeasures_the_shipped_classifier_against_corrected_labels(tmp_path: Path) -> None:
    # Labels found wrong after training are corrected; the held-out figure is measured again without retraining.
    import csv
    import hashlib
    import json
    import shutil

    from ml import orientation

    cars = tmp_path / "cars"
    cars.mkdir()
    names = [f"car{seed}.jpg" for seed in range(40)]
    for seed, name in enumerate(names):
        draw_car(seed=seed, facing_left=seed % 2 == 0).save(cars / name)
    held_out = [n for n in names if train_orientation.is_test(n)]
    assert held_out
    labels = tmp_path / "labels.csv"

    def write(flip: set[str]) -> None:
        with labels.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["file", "facing"])
            for seed, name in enumerate(names):
                facing = "left" if seed % 2 == 0 else "right"
                writer.writerow([name, {"left": "right", "right": "left"}[facing] if name in flip else facing])

    out = tmp_path / "model"
    shutil.copytree(orientation.DEFAULT_DIR, out)
    write(set())
    args = ["--labels", str(labels), "--data", str(cars), "--out", str(out), "--measure-only"]
    assert train_orientation.main(args) == 0
    before = json.loads((out / "metadata.json").read_text())
    assert before["held_out"]["orientation_rows"] == len(held_out)
    assert before["held_out_labels_sha256"] == hashlib.sha256(labels.read_bytes()).hexdigest()
    write({held_out[0]})  # one held-out label turned round
    assert train_orientation.main(args) == 0
    after = json.loads((out / "metadata.json").read_text())
    assert after["held_out"]["orientation_accuracy"] != before["held_out"]["orientation_accuracy"]
    assert after["held_out_labels_sha256"] != before["held_out_labels_sha256"]
    assert after["file"] == before["file"]  # the classifier itself is untouched
