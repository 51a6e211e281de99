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
