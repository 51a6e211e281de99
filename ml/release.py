"""A training checkpoint made the site's default model in one step (torch for the export only).

    python -m ml.release runs/canonical/best.pt --out ml/weights/default \\
        --data ../shared/data/cars ../shared/data/cars-more --noncars ../shared/data/noncars

(``make export-canonical``.) In order, in a temporary sibling of ``--out``: ``ml.export`` with every data
folder and the checkpoint's facings (per-view metrics, calibration, mean image, latent map on the photos
faced left as in training); ``ml.car_check`` refits the car check for this VAE (into the model's
``metadata.json: car_check``); ``ml.model_card`` writes ``MODEL_CARD.md``. Only then does the directory
replace ``--out`` (one rename) and the locator's ``metadata.json: check`` get the new constants (one
rename). Any failure before leaves the old model and the locator as they were.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ml import car_check, framing, model_card
from ml.data import list_images


def release(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    data_dirs: Sequence[str | os.PathLike],
    noncars: str | os.PathLike,
    locator_dir: str | os.PathLike = framing.LOCATOR_DIR,
    *,
    facings: str | os.PathLike | None = None,
    recipe: Path | None = model_card.RECIPE_DRAFT,
    name: str | None = None,
    composites: int = car_check.COMPOSITES,
) -> dict[str, Any]:
    """Export ``checkpoint`` into ``out`` with metrics, the car check refitted for it and its model card (the
    module docstring); returns ``{"out", "version", "seconds": {step: s}, "car_check"}``. Raises ValueError
    (data, facings or held-out photos not as training had them) and whatever the export raises; ``out``
    and ``locator_dir`` are unchanged then."""
    from ml.export import export_checkpoint

    car_files = [f for folder in data_dirs for f in list_images(folder)]
    noncar_files = list_images(noncars)
    seconds: dict[str, float] = {}
    check: dict[str, Any] = {}
    started = time.monotonic()

    def finish(model_dir: Path) -> None:
        seconds["export"] = round(time.monotonic() - started, 1)
        step = time.monotonic()
        check.update(car_check.check_refit(model_dir, car_files, noncar_files, locator_dir, composites))
        car_check.model_check_write(model_dir, check)
        seconds["car_check"] = round(time.monotonic() - step, 1)
        model_card.model_card_write(model_dir, recipe)

    written = export_checkpoint(checkpoint, out, data_dir=list(data_dirs), name=name, facings=facings, finish=finish)
    car_check.locator_check_write(locator_dir, check)
    seconds["total"] = round(time.monotonic() - started, 1)
    version = json.loads((written / "metadata.json").read_text())["version"]
    return {"out": str(written), "version": version, "seconds": seconds, "car_check": check}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ml.release", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="a training checkpoint (best.pt)")
    parser.add_argument("--out", type=Path, required=True, help="model directory to replace")
    parser.add_argument("--data", type=Path, nargs="+", required=True, help="the folders training used, in its order")
    parser.add_argument("--noncars", type=Path, required=True, help="photos of other things (the car check)")
    parser.add_argument("--locator", type=Path, default=framing.LOCATOR_DIR, help="the car locator's directory")
    parser.add_argument("--facings", type=Path, help="the facings CSV (default: the checkpoint config's path)")
    parser.add_argument("--name", help="version prefix (default: the output directory's name)")
    args = parser.parse_args(argv)
    if not args.checkpoint.is_file():
        parser.error(f"no such checkpoint: {args.checkpoint}")
    for folder in [*args.data, args.noncars, args.locator]:
        if not folder.is_dir():
            parser.error(f"no such folder: {folder}")
    import torch

    torch.set_num_threads(1)
    try:
        result = release(
            args.checkpoint, args.out, args.data, args.noncars, args.locator, facings=args.facings, name=args.name
        )
    except ValueError as error:
        parser.error(str(error))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
