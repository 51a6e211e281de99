"""Whole-photo stand-ins with known boxes (ml/composites.py) and the locator's held-out split."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from ml import composites
from tests.support import draw_car


def test_it_pastes_each_car_where_its_box_says(tmp_path: Path) -> None:
    cars, backgrounds = tmp_path / "cars", tmp_path / "bg"
    cars.mkdir()
    backgrounds.mkdir()
    draw_car((200, 100)).save(cars / "car.png")
    Image.new("RGB", (300, 200), (0, 0, 255)).save(backgrounds / "blue.png")
    rows = composites.write_composites([cars / "car.png"], [backgrounds / "blue.png"], tmp_path / "out", count=3)
    with open(tmp_path / "out" / "boxes.csv", newline="") as handle:
        assert [r["file"] for r in csv.DictReader(handle)] == ["0000.jpg", "0001.jpg", "0002.jpg"]
    for row in rows:
        with Image.open(tmp_path / "out" / str(row["file"])) as picture:
            pixels = np.asarray(picture.convert("RGB"), dtype=int)
        assert picture.width == composites.LONGEST
        # Blue everywhere but the box; inside it the car's light background at its corners.
        not_blue = (pixels[..., 2] < 200) | (pixels[..., 0] > 60)
        rows_hit, cols_hit = np.nonzero(not_blue)
        assert abs(cols_hit.min() - row["left"]) <= 2 and abs(cols_hit.max() + 1 - row["right"]) <= 2
        assert abs(rows_hit.min() - row["top"]) <= 2 and abs(rows_hit.max() + 1 - row["bottom"]) <= 2
        width = int(row["right"]) - int(row["left"])
        assert composites.WIDTH_RANGE[0] - 0.01 <= width / picture.width <= composites.WIDTH_RANGE[1] + 0.01


def test_it_holds_out_the_named_photos_and_every_nth() -> None:
    files = [Path(f"{i:02d}.jpg") for i in range(10)]
    train, held = composites.held_out_split(files, {"00.jpg"}, 4)
    assert [p.name for p in held] == ["00.jpg", "03.jpg", "07.jpg"]
    assert sorted(train + held) == files and not set(train) & set(held)
