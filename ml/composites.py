"""Whole-photo stand-ins with known car boxes: car crops pasted into photos of other things.

    python -m ml.composites --cars ../shared/data/cars --backgrounds ../shared/data/noncars \\
        --out runs/composites --count 200 [--held-out ml/weights/default]

Writes ``<out>/NNNN.jpg`` and ``<out>/boxes.csv`` (``file,left,top,right,bottom,car``: the pasted
crop's box in the composite's pixels, right/bottom exclusive). ``python -m ml.evaluate --data OUT
--boxes OUT/boxes.csv`` then measures how well the site finds and frames the car.

Each composite is a background photo scaled to ``LONGEST`` pixels on its longest side with one car
crop pasted at a random place, its width a random 35-85% of the background's (at most 90% of its
height). A tight crop's rectangle is an edge no real photo has, which a box finder may learn or
exploit: these are a stand-in for whole photos, not a replacement (say so wherever their numbers
are quoted). Seeded: the same arguments write the same files.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from ml.data import list_images
from ml.preprocess import open_image

LONGEST = 448
# The locator's held-out photos (ml/train_locator.py never trains on them): every CAR_EVERY-th car photo
# (besides the VAE's validation photos) and every BACKGROUND_EVERY-th non-car photo, in name order.
CAR_EVERY = 10
BACKGROUND_EVERY = 2
WIDTH_RANGE = (0.35, 0.85)
MAX_HEIGHT = 0.9


def held_out_split(files: Sequence[Path], held_out_names: set[str], every: int) -> tuple[list[Path], list[Path]]:
    """``(train, held_out)`` of ``files`` in name order: held out if the name is in ``held_out_names`` or
    it is the ``every``-th."""
    train, held = [], []
    for index, path in enumerate(sorted(files)):
        (held if path.name in held_out_names or index % every == every - 1 else train).append(path)
    return train, held


def composite(car: Image.Image, background: Image.Image, rng: random.Random) -> tuple[Image.Image, tuple[int, ...]]:
    """``car`` pasted into ``background`` (both RGB) -> the picture and the car's ``(left, top, right, bottom)``."""
    scale = LONGEST / max(background.size)
    scene = background.resize(
        (max(1, round(background.width * scale)), max(1, round(background.height * scale))), Image.Resampling.LANCZOS
    )
    width = scene.width * rng.uniform(*WIDTH_RANGE)
    height = width * car.height / car.width
    if height > scene.height * MAX_HEIGHT:
        height = scene.height * MAX_HEIGHT
        width = height * car.width / car.height
    pasted = car.resize((max(1, round(width)), max(1, round(height))), Image.Resampling.LANCZOS)
    left = rng.randint(0, scene.width - pasted.width)
    top = rng.randint(0, scene.height - pasted.height)
    scene.paste(pasted, (left, top))
    return scene, (left, top, left + pasted.width, top + pasted.height)


def write_composites(
    cars: Sequence[Path], backgrounds: Sequence[Path], out: Path, count: int, seed: int = 0
) -> list[dict[str, object]]:
    """Write ``count`` composites (cars and backgrounds drawn at random, seeded) and ``boxes.csv`` into ``out``."""
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, object]] = []
    for index in range(count):
        car_path, background_path = rng.choice(list(cars)), rng.choice(list(backgrounds))
        picture, box = composite(open_image(car_path), open_image(background_path), rng)
        name = f"{index:04d}.jpg"
        picture.save(out / name, quality=90)
        rows.append(
            dict(zip(("file", "left", "top", "right", "bottom"), (name, *box), strict=True)) | {"car": car_path.name}
        )
    with open(out / "boxes.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file", "left", "top", "right", "bottom", "car"])
        writer.writeheader()
        writer.writerows(rows)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ml.composites", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cars", type=Path, nargs="+", required=True, help="folders of tight car crops")
    parser.add_argument("--backgrounds", type=Path, required=True, help="folder of photos without cars")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--held-out",
        type=Path,
        metavar="MODEL_DIR",
        help="only photos neither this VAE (its val_names) nor the locator trained on (held_out_split)",
    )
    args = parser.parse_args(argv)
    cars = [f for folder in args.cars for f in list_images(folder)]
    backgrounds = list_images(args.backgrounds)
    if args.held_out:
        val_names = set(json.loads((args.held_out / "metadata.json").read_text())["data"]["val_names"])
        cars = held_out_split(cars, val_names, CAR_EVERY)[1]
        backgrounds = held_out_split(backgrounds, set(), BACKGROUND_EVERY)[1]
    if not cars:
        parser.error("no car photos to paste")
    rows = write_composites(cars, backgrounds, args.out, args.count, args.seed)
    print(json.dumps({"composites": len(rows), "out": str(args.out)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
