"""The car check refit for a VAE (numpy + Pillow + onnxruntime; no torch, no Django).

    python -m ml.car_check --model ml/weights/default --cars ../shared/data/cars ../shared/data/cars-more \\
        --noncars ../shared/data/noncars [--write-locator ml/weights/locator]

The page's car check (``ml.framing.locator_check``) is ``sigmoid(a * locator logit + b * z + c) >= threshold``,
``z`` the VAE's car-likeness z-score of the frame the model saw (``runtime.car_likeness_z``). ``z`` depends on
the VAE, so ``a``, ``b``, ``c`` are refitted for each new default model, the way issue 10 fitted the first ones
(``ml/weights/locator/README.md``):

- **photos**, none seen in training by the VAE or the locator: the car photos among the VAE's validation
  photos (its ``val_names``) that the locator held out too (``ml.composites.held_out_split`` with the
  locator's ``held_out.vae_val_names``), as they are ("crops", the whole picture being the car); the same
  cars pasted into the locator's held-out non-car photos ("composites", ``ml.composites``, seeded), and
  those non-car photos ("non-cars");
- **features** exactly as ``ml.framing.photo_reconstruct`` computes them (``locator_evidence``: the locator's
  logit and box, the frame, the facing classifier, the frame mirrored to face left, its z-score);
- **fit**: logistic regression of car vs non-car on ``(logit, z, 1)``, the two classes weighted equally,
  by Newton's method (iteratively reweighted least squares, with a 1e-6 ridge); the threshold stays
  the page's (``DEFAULT_THRESHOLD``);
- **rates** at the threshold: ``false_reject_rate`` (cars told no car was found; crops and composites
  also apart), ``false_accept_rate`` (non-cars told they are a car), the AUROC, and the same rates
  2-fold cross-fitted (fitted on one half, measured on the other), the honest estimate.

The result is the model's ``metadata.json: car_check`` (which ``ml.framing`` prefers while the locator is
the one it was fitted with) and, with ``--write-locator``, the locator's ``metadata.json: check`` (what the
site reads for models without their own).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ml import framing, runtime
from ml.composites import BACKGROUND_EVERY, CAR_EVERY, held_out_split, write_composites
from ml.data import list_images
from ml.evaluate import auroc

DEFAULT_THRESHOLD = 0.5
COMPOSITES = 150
NEWTON_STEPS = 50
RIDGE = 1e-6
METADATA_FILE = "metadata.json"


def check_fit(features: np.ndarray, is_car: np.ndarray) -> np.ndarray:
    """``(a, b, c)`` of ``P(car) = sigmoid(a * logit + b * z + c)`` fitted to ``features`` ``[N, 2]`` (locator
    logit, frame z-score) and ``is_car`` (bool ``[N]``) by maximum likelihood, cars and non-cars weighted
    equally (each class sums to a weight of 1/2). Newton's method, ``NEWTON_STEPS`` steps, ridge ``RIDGE``.
    Raises ValueError without at least one photo of each class."""
    is_car = np.asarray(is_car, bool)
    if not is_car.any() or is_car.all():
        raise ValueError("the car check needs car and non-car photos")
    x = np.column_stack([np.asarray(features, np.float64), np.ones(len(is_car))])
    y = is_car.astype(np.float64)
    weights = np.where(is_car, 0.5 / is_car.sum(), 0.5 / (~is_car).sum())
    w = np.zeros(3)
    for _ in range(NEWTON_STEPS):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ w, -500, 500)))
        gradient = x.T @ (weights * (p - y))
        hessian = (x * (weights * p * (1 - p))[:, None]).T @ x + RIDGE * np.eye(3)
        w -= np.linalg.solve(hessian, gradient)
    return w


def check_probabilities(features: np.ndarray, constants: Sequence[float]) -> np.ndarray:
    """``sigmoid(a * logit + b * z + c)`` ``[N]`` for ``features`` ``[N, 2]`` (``ml.framing.locator_check``)."""
    a, b, c = constants
    s = np.asarray(features, np.float64) @ np.array([a, b]) + c
    return 1.0 / (1.0 + np.exp(-np.clip(s, -500, 500)))


def check_rates(
    features: np.ndarray, is_car: np.ndarray, constants: Sequence[float], threshold: float = DEFAULT_THRESHOLD
) -> dict[str, float]:
    """At ``threshold``: ``false_reject_rate`` (cars below it), ``false_accept_rate`` (non-cars at or above it),
    ``auroc`` and the median probabilities of cars and non-cars."""
    is_car = np.asarray(is_car, bool)
    p = check_probabilities(features, constants)
    return {
        "false_reject_rate": round(float(np.mean(p[is_car] < threshold)), 4),
        "false_accept_rate": round(float(np.mean(p[~is_car] >= threshold)), 4),
        "auroc": round(auroc(p[is_car], p[~is_car]), 4),
        "car_likeness_median_cars": round(float(np.median(p[is_car])), 4),
        "car_likeness_median_noncars": round(float(np.median(p[~is_car])), 4),
    }


def check_cross_fitted(
    features: np.ndarray, is_car: np.ndarray, threshold: float = DEFAULT_THRESHOLD
) -> dict[str, float]:
    """The rates of ``check_rates`` 2-fold cross-fitted: photos split by index parity, each half scored
    with the constants fitted on the other; means of the two halves."""
    index = np.arange(len(is_car))
    rates = []
    for fold in (0, 1):
        train, test = index % 2 != fold, index % 2 == fold
        constants = check_fit(features[train], is_car[train])
        rates.append(check_rates(features[test], is_car[test], constants, threshold))
    keys = ("false_reject_rate", "false_accept_rate", "auroc")
    return {key: round(float(np.mean([r[key] for r in rates])), 4) for key in keys}


def check_features(
    model: runtime.Model, files: Sequence[Path], locator: framing.CarLocator
) -> tuple[np.ndarray, list[str]]:
    """``(features [N, 2], names)``: the locator logit and the frame's z-score of each decodable photo, as the
    site computes them (``ml.framing.locator_evidence`` with the shipped facing classifier). Undecodable
    files are left out."""
    predictor = framing._default_facing()
    rows, names = [], []
    for path in files:
        try:
            image = runtime.open_source(path)
        except runtime.ImageError:
            continue
        logit, _, _, _, z = framing.locator_evidence(model, image, locator, predictor)
        rows.append((logit, 0.0 if z is None else z))
        names.append(Path(path).name)
    return np.array(rows, np.float64).reshape(-1, 2), names


def held_out_photos(
    car_files: Sequence[Path],
    noncar_files: Sequence[Path],
    vae_val_names: set[str],
    locator_held_out: dict[str, Any],
) -> tuple[list[Path], list[Path]]:
    """``(cars, non-cars)`` neither model trained on: cars among the VAE's validation photos that the locator
    held out (``locator_held_out``: its metadata's ``held_out``, the VAE validation names it held out and
    every ``car_every``-th other photo), non-cars the locator held out (every ``background_every``-th)."""
    locator_names = set(locator_held_out.get("vae_val_names") or [])
    _, held_cars = held_out_split(car_files, locator_names, int(locator_held_out.get("car_every", CAR_EVERY)))
    cars = [f for f in held_cars if f.name in vae_val_names]
    every = int(locator_held_out.get("background_every", BACKGROUND_EVERY))
    _, noncars = held_out_split(noncar_files, set(), every)
    return cars, noncars


def check_refit(
    model_dir: str | os.PathLike,
    car_files: Sequence[Path],
    noncar_files: Sequence[Path],
    locator_dir: str | os.PathLike = framing.LOCATOR_DIR,
    composites: int = COMPOSITES,
    seed: int = 0,
    threshold: float = DEFAULT_THRESHOLD,
) -> dict[str, Any]:
    """The car check's constants fitted for the VAE in ``model_dir`` and the locator in ``locator_dir`` (the
    module docstring), with their rates: the ``car_check`` entry of a model's metadata. ``car_files`` and
    ``noncar_files`` are every photo of the data folders; the held-out ones are chosen here
    (``held_out_photos``). Raises ValueError when no held-out car or non-car photo is left."""
    model = runtime.Model(model_dir)
    locator = framing.CarLocator(locator_dir)
    vae_val_names = set((model.metadata.get("data") or {}).get("val_names") or [])
    cars, noncars = held_out_photos(car_files, noncar_files, vae_val_names, locator.metadata.get("held_out") or {})
    if not cars or not noncars:
        raise ValueError(f"no held-out photos for the car check: {len(cars)} cars, {len(noncars)} non-cars")
    with tempfile.TemporaryDirectory(prefix="car-check-") as folder:
        write_composites(cars, noncars, Path(folder), composites, seed)
        composite_features, _ = check_features(model, list_images(folder), locator)
    crop_features, _ = check_features(model, cars, locator)
    noncar_features, _ = check_features(model, noncars, locator)
    features = np.concatenate([crop_features, composite_features, noncar_features])
    is_car = np.r_[np.ones(len(crop_features) + len(composite_features), bool), np.zeros(len(noncar_features), bool)]
    a, b, c = (float(f"{v:.4g}") for v in check_fit(features, is_car))
    rates = check_rates(features, is_car, (a, b, c), threshold)
    is_crop = np.r_[np.ones(len(crop_features), bool), np.zeros(len(composite_features), bool)]
    cars_p = check_probabilities(features[is_car], (a, b, c))
    return {
        "a": a,
        "b": b,
        "c": c,
        "threshold": threshold,
        "vae": model.version,
        "locator_sha256": locator.sha256,
        "fitted_on": (
            f"{len(crop_features)} held-out crops + {len(composite_features)} held-out composites vs "
            f"{len(noncar_features)} held-out non-car photos (python -m ml.car_check); logistic regression, "
            "classes weighted equally"
        ),
        "n_crops": len(crop_features),
        "n_composites": len(composite_features),
        "n_noncars": len(noncar_features),
        **rates,
        "false_reject_rate_crops": round(float(np.mean(cars_p[is_crop] < threshold)), 4),
        "false_reject_rate_composites": round(float(np.mean(cars_p[~is_crop] < threshold)), 4),
        "cross_fitted": check_cross_fitted(features, is_car, threshold),
        "weights_alone_auroc": {
            "locator_logit": round(auroc(features[is_car, 0], features[~is_car, 0]), 4),
            "frame_z": round(auroc(features[is_car, 1], features[~is_car, 1]), 4),
        },
    }


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` atomically (a temporary sibling renamed into place)."""
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as out:
            out.write(json.dumps(data, indent=1) + "\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


LOCATOR_CHECK_KEYS = ("a", "b", "c", "threshold", "fitted_on", "vae")


def locator_check_write(locator_dir: str | os.PathLike, car_check: dict[str, Any]) -> dict[str, Any]:
    """Replace the locator's ``metadata.json: check`` (what the site reads for a model without its own
    ``car_check``) with ``car_check``'s constants and rates, atomically; every other key is kept. Returns it."""
    path = Path(locator_dir) / METADATA_FILE
    metadata = json.loads(path.read_text())
    check = {key: car_check[key] for key in LOCATOR_CHECK_KEYS}
    check["rates"] = {
        key: car_check[key]
        for key in ("false_reject_rate", "false_accept_rate", "auroc", "cross_fitted")
        if key in car_check
    }
    metadata["check"] = check
    _write_json(path, metadata)
    return check


def model_check_write(model_dir: str | os.PathLike, car_check: dict[str, Any]) -> None:
    """Add ``car_check`` to the model's ``metadata.json`` (atomically; the ONNX files and their SHA-256
    entries are untouched)."""
    path = Path(model_dir) / runtime.METADATA_FILE
    metadata = json.loads(path.read_text())
    metadata["car_check"] = car_check
    handle, tmp = tempfile.mkstemp(prefix=".metadata-", dir=path.parent)
    with os.fdopen(handle, "w") as out:
        out.write(json.dumps(metadata, indent=1) + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ml.car_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=runtime.DEFAULT_MODEL_DIR, help="exported model directory")
    parser.add_argument("--cars", type=Path, nargs="+", required=True, help="the car folders the model trained on")
    parser.add_argument("--noncars", type=Path, required=True, help="folder of photos of other things")
    parser.add_argument("--locator", type=Path, default=framing.LOCATOR_DIR, help="the car locator's directory")
    parser.add_argument("--composites", type=int, default=COMPOSITES)
    parser.add_argument("--write-model", action="store_true", help="add car_check to the model's metadata.json")
    parser.add_argument("--write-locator", action="store_true", help="replace the locator's metadata.json check")
    args = parser.parse_args(argv)
    try:
        cars = [f for folder in args.cars for f in list_images(folder)]
        noncars = list_images(args.noncars)
        result = check_refit(args.model, cars, noncars, args.locator, composites=args.composites)
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))
    if args.write_model:
        model_check_write(args.model, result)
    if args.write_locator:
        locator_check_write(args.locator, result)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
