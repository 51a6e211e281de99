"""Quality of an exported model on a folder of photos (numpy + Pillow + onnxruntime; no torch).

    python -m ml.evaluate --model ml/weights/default --data DIR [DIR ...] [--noncars DIR] [--held-out]
        [--boxes CSV] [--grid PNG] [--no-search [--facings CSV]]

Each photo goes through what the site does (``ml.framing.photo_reconstruct``): the VAE searches it for
the car, the frame around the car is letterboxed into the model's input and mirrored to face left
when the car faces right (``--no-search``: the whole photo, as ``ml.export`` measures the model on its
validation crops; ``--facings CSV`` then mirrors the photos facing right as training did and adds the
per-view means ``psnr_side``, ``psnr_head_on``... that ``ml.export`` records). Prints a human summary
and, as its last line, one JSON object. All metrics are means over images of per-image values,
computed on the frame the model saw, inside the letterbox box
(the bars added by preprocessing are excluded): ``mse``, ``psnr`` (dB), ``ssim`` (Gaussian 11x11, see
``ml.runtime.ssim``), ``kl`` (nats). Reference predictors on the same target pixels:

- ``baseline_mean_psnr``: the model directory's ``mean_image.png`` (the per-pixel mean of the
  training images' model inputs, written by ``ml.export --data``); absent without it.
- ``baseline_thumb8_psnr`` / ``baseline_thumb16_psnr``: the target shrunk to 8x8 (192 numbers) or
  16x16 (768 numbers) with bicubic resampling and enlarged back to its size the same way; the
  model keeps 128.

Is the reconstruction recognisably the same car? Three numbers answer it without a person looking:

- ``same_car_top1``: the fraction of images whose reconstruction is nearer (mean squared error over
  its box) to its own photo than to every other photo evaluated (chance is 1/n);
- ``orientation_agreement``: the fraction whose reconstruction is nearer to its photo than to the
  photo mirrored left-right (a car facing the other way; 0.5 is chance);
- ``colour_error``: the mean absolute difference between the average colour of photo and
  reconstruction inside the box, in 0-255 levels per channel.

The car check (the search's most car-like box, ``ml.framing``): ``car_likeness_median`` over the cars,
``car_false_reject_rate`` (cars told no car was found). With ``--noncars DIR`` also ``ood_auroc``: the
probability that a random car from ``--data`` gets a higher ``car_likeness`` than a random non-car (1.0
separates them perfectly, 0.5 is chance), ``noncar_likeness_median`` and ``noncar_false_accept_rate``
(non-cars in which a car was found). With ``--boxes CSV`` (the true boxes, e.g. of composites made by
``python -m ml.composites``): ``box_iou_mean`` and ``box_hit_rate`` (IoU at least 0.5).

With ``--orientation-labels CSV`` (columns ``file,facing``: left / right / front / rear, e.g.
``ml/labels/orientation.csv``) also ``orientation_accuracy``: the fraction of the labelled left/right
photos among those evaluated whose facing is predicted correctly (``orientation_rows`` of them): on the
frame the site gives ``ml.orientation`` (a photo in which no car was found counts as wrong), or on the
whole photo with ``--no-search``. The hand labels include the classifier's training photos: its
held-out accuracy is in ``ml/weights/orientation/metadata.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from ml import framing, runtime
from ml.data import list_images
from ml.preprocess import open_image, prepare

THUMB_SIZES = (8, 16)
# car_likeness = P(N(0,1) > sum_i w_i z_i / |w|), z_i the z-score of feature i (ml.runtime.score_features)
# against the held-out cars. Chosen by the cars-vs-non-cars AUROC (measurements in the model card): how far
# the model's error exceeds a 16x16 thumbnail's separates far better than the raw reconstruction error or
# KL, which plain non-car photos have as low as cars, or the posterior log-variance.
SCORE_WEIGHTS = {"excess_error_db": 1.0}
FEATURES = ("log_mse", "kl", "logvar", "excess_error_db")


thumbnail_prediction = runtime.thumbnail_prediction


def _mse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))


def load_mean_image(model: runtime.Model) -> np.ndarray | None:
    """The model directory's mean training image ``[C, H, W]`` in [0, 1], if it has one."""
    name = model.metadata.get("mean_image")
    if not name or not (model.model_dir / name).is_file():
        return None
    with Image.open(model.model_dir / name) as image:
        array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    array = array.transpose(2, 0, 1)
    return array.mean(axis=0, keepdims=True) if model.config.channels == 1 else array


class PairStore:
    """Targets and reconstructions kept (2x2-average-pooled, float32) for the same-car measures."""

    def __init__(self) -> None:
        self.targets: list[np.ndarray] = []
        self.recons: list[np.ndarray] = []
        self.masks: list[np.ndarray] = []

    def add(self, target: np.ndarray, recon: np.ndarray, box: tuple[int, int, int, int]) -> None:
        mask = np.zeros(target.shape[1:], dtype=np.float32)
        left, top, right, bottom = box
        mask[top:bottom, left:right] = 1.0
        self.targets.append(_pool(target))
        self.recons.append(_pool(recon))
        self.masks.append(_pool(mask[None])[0])

    def __len__(self) -> int:
        return len(self.targets)


def _pool(array: np.ndarray) -> np.ndarray:
    channels, height, width = array.shape
    height, width = height - height % 2, width - width % 2
    view = array[:, :height, :width].astype(np.float32).reshape(channels, height // 2, 2, width // 2, 2)
    return view.mean(axis=(2, 4))


def same_car_measures(pairs: PairStore) -> dict[str, float]:
    """``same_car_top1``, ``orientation_agreement`` and ``colour_error`` (see the module docstring)."""
    if len(pairs) < 2:
        return {}
    targets = np.stack(pairs.targets)  # [n, C, h, w]
    recons = np.stack(pairs.recons)
    masks = np.stack(pairs.masks)[:, None]  # [n, 1, h, w]
    n = len(targets)
    weight = np.broadcast_to(masks, targets.shape).reshape(n, -1)
    t = targets.reshape(n, -1)
    r = recons.reshape(n, -1)
    # distance[i, j] = sum over box_i of (recon_i - target_j)^2, expanded into matrix products.
    distance = (weight * r * r).sum(1)[:, None] - 2.0 * (weight * r) @ t.T + weight @ (t * t).T
    own = np.diag(distance)
    others = distance + np.diag(np.full(n, np.inf))
    top1 = float(np.mean(own < others.min(axis=1)))
    mirrored = ((recons - targets[..., ::-1]) ** 2 * masks).reshape(n, -1).sum(1)
    straight = ((recons - targets) ** 2 * masks).reshape(n, -1).sum(1)
    area = masks.reshape(n, -1).sum(1)
    colour_t = (targets * masks).sum(axis=(2, 3)) / area[:, None]
    colour_r = (recons * masks).sum(axis=(2, 3)) / area[:, None]
    return {
        "same_car_top1": round(top1, 4),
        "orientation_agreement": round(float(np.mean(straight < mirrored)), 4),
        "colour_error": round(float(np.abs(colour_t - colour_r).mean() * 255.0), 2),
    }


def _as_array(image: Image.Image, channels: int) -> np.ndarray:
    """An RGB picture -> ``[C, h, w]`` float32 in [0, 1]."""
    array = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0
    return array.mean(axis=0, keepdims=True) if channels == 1 else array


def score_file(
    model: runtime.Model,
    path: Path,
    pairs: PairStore | None = None,
    *,
    locate: bool = True,
    method: str = "locator",
    facing: str | None = None,
) -> dict[str, Any]:
    """One photo through ``ml.framing.photo_reconstruct`` (the site's search, frame and facing; the whole
    photo with ``locate=False``): its scores, features and baselines on the frame the model saw, where the
    car was found. ``facing`` (only with ``locate=False``): the photo's known facing (a facings file, as
    training used it); "right" mirrors the whole photo for the model, as the site mirrors a right-facing
    frame. Raises ``runtime.ImageError`` for an undecodable file, ValueError for ``facing`` with ``locate``."""
    source: runtime.ImageSource = path
    if facing is not None:
        if locate:
            raise ValueError("a known facing replaces the search's own: use it with locate=False")
        if facing == "right":
            source = ImageOps.mirror(runtime.open_source(path))
    framed = framing.photo_reconstruct(model, source, locate=locate, method=method)
    result = framed.result
    # What the model saw and what it gave back, in the same (model's) direction, letterbox bars removed.
    target = _as_array(result.model_input, model.config.channels)
    output = ImageOps.mirror(result.reconstruction) if framed.mirrored else result.reconstruction
    thumb_mse = {size: runtime.thumbnail_mse(target, size) for size in THUMB_SIZES}
    scores = result.scores
    seen = prepare(result.model_input, model.config)
    logvar = model.encode_array(seen.array[None])[1][0]  # the Result keeps only the mean
    record: dict[str, Any] = {"name": Path(path).name, **scores.to_dict()}
    record.update(runtime.score_features(scores.mse, scores.kl, logvar, thumb_mse[16]))
    if framed.car_likeness is not None:  # the page's car check replaces the frame's own car-likeness
        record["frame_car_likeness"] = record["car_likeness"]
        record["car_likeness"] = framed.car_likeness
    record.update(
        car_found=framed.car_found,
        car_evidence=framed.car_z,
        box=framed.box.as_list() if framed.box else None,
        frame=framed.frame.as_list(),
        facing=framed.facing if facing is None else facing,
        mirrored=framed.mirrored or facing == "right",
    )
    mean = _mean_image_cache(model)
    if mean is not None:
        record["baseline_mean_psnr"] = runtime.psnr_from_mse(_mse(runtime.crop_box(mean, seen.box), target))
    for size in THUMB_SIZES:
        record[f"baseline_thumb{size}_psnr"] = runtime.psnr_from_mse(thumb_mse[size])
    if pairs is not None:
        pairs.add(seen.array, prepare(output, model.config).array, seen.box)
    return record


_mean_images: dict[str, np.ndarray | None] = {}


def _mean_image_cache(model: runtime.Model) -> np.ndarray | None:
    key = str(model.model_dir)
    if key not in _mean_images:
        _mean_images[key] = load_mean_image(model)
    return _mean_images[key]


def score_files(
    model: runtime.Model,
    files: Sequence[Path],
    pairs: PairStore | None = None,
    *,
    locate: bool = False,
    method: str = "locator",
    facings: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Per-image metrics and baselines (``score_file``); an undecodable file gets ``{"name", "error"}``.
    With ``pairs``, also keeps each target and reconstruction there for ``same_car_measures``.
    ``locate=True`` searches each photo for the car as the site does; False gives the model the whole
    photo (how export calibrates and measures the model on its validation crops), with ``facings``
    ({file name: facing}, e.g. ``ml/labels/facings.csv``) turned to face left as in training."""
    records: list[dict[str, Any]] = []
    for path in files:
        facing = facings.get(Path(path).name) if facings is not None else None
        try:
            records.append(score_file(model, Path(path), pairs, locate=locate, method=method, facing=facing))
        except runtime.ImageError as error:
            records.append({"name": Path(path).name, "error": str(error)})
    return records


def summarize(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Means of the per-image values over the images that decoded."""
    good = [r for r in records if "error" not in r]
    summary: dict[str, Any] = {"n": len(good), "skipped": len(records) - len(good)}
    keys = ["psnr", "ssim", "mse", "kl", "baseline_mean_psnr", *(f"baseline_thumb{s}_psnr" for s in THUMB_SIZES)]
    for key in keys:
        values = [r[key] for r in good if r.get(key) is not None]
        if values:
            summary[key] = round(float(np.mean(values)), 6)
    likeness = [r["car_likeness"] for r in good if r.get("car_likeness") is not None]
    if likeness:
        summary["car_likeness_median"] = round(float(np.median(likeness)), 4)
    return summary


# Per-view and per-group measures: the keys of ``summarize`` repeated for a part of the photos.
GROUP_KEYS = ("n", "psnr", "ssim", "kl", "baseline_mean_psnr", "baseline_thumb8_psnr", "baseline_thumb16_psnr")
VIEWS = {"side": ("left", "right"), "head_on": ("front", "rear")}


def summarize_groups(records: Sequence[dict[str, Any]], groups: Mapping[str, Iterable[str]]) -> dict[str, Any]:
    """``summarize`` of each group of photos ({group: file names}) as flat keys ``<key>_<group>`` (``psnr_side``,
    ``baseline_thumb16_psnr_head_on``, ``n_side``...; ``GROUP_KEYS``); an empty group adds nothing."""
    result: dict[str, Any] = {}
    for group, names in groups.items():
        members = set(names)
        part = [r for r in records if r["name"] in members]
        if not any("error" not in r for r in part):
            continue
        summary = summarize(part)
        result.update({f"{key}_{group}": summary[key] for key in GROUP_KEYS if key in summary})
    return result


def view_groups(facings: Mapping[str, str]) -> dict[str, list[str]]:
    """{"side": names facing left or right, "head_on": names facing front or rear} of a facings mapping."""
    return {view: [name for name, facing in facings.items() if facing in labels] for view, labels in VIEWS.items()}


def calibrate(records: Sequence[dict[str, Any]], weights: dict[str, float] | None = None) -> dict[str, Any]:
    """Scoring calibration from held-out cars: mean and std of each feature, and the weights."""
    good = [r for r in records if "error" not in r]
    if len(good) < 2:
        raise ValueError("calibration needs at least 2 decodable images")
    calibration: dict[str, Any] = {
        "method": "car_likeness = P(N(0,1) > sum_f weights[f] * (f - mean[f]) / std[f] / |weights|)",
        "n": len(good),
        "weights": dict(weights or SCORE_WEIGHTS),
        "features": {},
    }
    for name in FEATURES:
        values = np.array([r[name] for r in good], dtype=np.float64)
        calibration["features"][name] = {"mean": float(values.mean()), "std": float(values.std(ddof=1))}
    return calibration


def auroc(positives: Sequence[float], negatives: Sequence[float]) -> float:
    """P(score of a random positive > score of a random negative), ties counted half (Mann-Whitney)."""
    pos = np.asarray(positives, dtype=np.float64)
    neg = np.asarray(negatives, dtype=np.float64)
    if not len(pos) or not len(neg):
        raise ValueError("AUROC needs at least one positive and one negative")
    values = np.concatenate([pos, neg])
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    sorted_values = values[order]
    # Average ranks over runs of equal values.
    start = 0
    for end in range(1, len(values) + 1):
        if end == len(values) or sorted_values[end] != sorted_values[start]:
            ranks[order[start:end]] = (start + end - 1) / 2 + 1
            start = end
    u = ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))


def car_likeness_evidence(record: dict[str, Any]) -> float:
    """Higher = more car-like: ``car_likeness``, or for an uncalibrated model the same evidence
    uncalibrated (minus the ``SCORE_WEIGHTS`` sum of the raw features)."""
    if record.get("car_likeness") is not None:
        return float(record["car_likeness"])
    return -sum(weight * float(record[name]) for name, weight in SCORE_WEIGHTS.items())


def orientation_scores(
    files: Sequence[Path], labels: dict[str, str], facings: dict[str, str] | None = None
) -> dict[str, Any]:
    """``orientation_accuracy`` and ``orientation_rows`` (see the module docstring) of the facing
    classifier on the photos in ``files`` that ``labels`` ({file name: facing}) covers: its ``facings``
    ({file name: facing}, as the site decided them on the frames) when given, else on each whole photo."""
    from ml import orientation

    predicted = dict(facings) if facings is not None else {}
    for path in files if facings is None else []:
        if Path(path).name in labels:
            rgb = np.asarray(open_image(str(path)))
            predicted[Path(path).name] = orientation.facing_predict(rgb).label
    measures = orientation.orientation_accuracy(predicted, labels)
    accuracy = measures["orientation_accuracy"]
    return {
        "orientation_accuracy": None if accuracy is None else round(accuracy, 4),
        "orientation_rows": measures["orientation_rows"],
    }


def evaluate(
    model_dir: str | os.PathLike,
    files: Sequence[str | os.PathLike],
    noncar_files: Sequence[str | os.PathLike] | None = None,
    threads: int | None = None,
    *,
    locate: bool = False,
    boxes: dict[str, framing.Box] | None = None,
    method: str = "locator",
    orientation_labels: dict[str, str] | None = None,
    facings: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Metrics of the model in ``model_dir`` on ``files`` (see the module docstring): with ``noncar_files``
    also ``ood_auroc``, the car-likeness medians and the car check's error rates; ``locate`` searches each
    photo for the car as the site does (else the model sees each whole photo); ``boxes`` (file name ->
    true box of the car) adds ``box_iou_mean`` and ``box_hit_rate`` (IoU at least 0.5); ``orientation_labels``
    ({file name: facing}) adds ``orientation_accuracy``; ``facings`` ({file name: facing}, only with ``locate``
    False) turns the cars to face left as training did and adds the per-view measures (``psnr_side``,
    ``psnr_head_on``...: ``summarize_groups``), as ``ml.export`` records them."""
    model = runtime.load_model(model_dir, threads=threads)
    pairs = PairStore()
    records = score_files(model, [Path(f) for f in files], pairs, locate=locate, method=method, facings=facings)
    result: dict[str, Any] = {"model": model.version, **summarize(records), **same_car_measures(pairs)}
    if facings is not None:
        result.update(summarize_groups(records, view_groups(facings)))
    cars = [r for r in records if "error" not in r]
    if locate and cars:
        result["car_false_reject_rate"] = round(float(np.mean([not r["car_found"] for r in cars])), 4)
    if boxes:
        ious = [framing.Box(*r["box"]).iou(boxes[r["name"]]) if r["box"] else 0.0 for r in cars if r["name"] in boxes]
        if ious:
            result["box_iou_mean"] = round(float(np.mean(ious)), 4)
            result["box_hit_rate"] = round(float(np.mean(np.array(ious) >= 0.5)), 4)
    if noncar_files:
        noncar_records = score_files(model, [Path(f) for f in noncar_files], locate=locate, method=method)
        noncars = [r for r in noncar_records if "error" not in r]
        result["n_noncars"] = len(noncars)
        if locate and noncars:
            result["noncar_false_accept_rate"] = round(float(np.mean([bool(r["car_found"]) for r in noncars])), 4)
        if cars and noncars:
            result["ood_auroc"] = round(
                auroc([car_likeness_evidence(r) for r in cars], [car_likeness_evidence(r) for r in noncars]), 4
            )
            # Each feature of the frame alone, "higher = less car-like": the evidence behind SCORE_WEIGHTS.
            result["ood_auroc_by_feature"] = {
                name: round(auroc([-r[name] for r in cars], [-r[name] for r in noncars]), 4) for name in FEATURES
            }
            likeness = [r["car_likeness"] for r in noncars if r.get("car_likeness") is not None]
            if likeness:
                result["noncar_likeness_median"] = round(float(np.median(likeness)), 4)
    if orientation_labels is not None:
        # Searched: the facing the site decided on each photo's frame ("front", never mirrored, when no car was found).
        facings = {r["name"]: r["facing"] or "front" for r in cars} if locate else None
        result.update(orientation_scores([Path(f) for f in files], orientation_labels, facings))
    return result


def _fit(image: Image.Image, width: int, height: int) -> Image.Image:
    """``image`` scaled to fit ``width x height``, centred on white."""
    cell = Image.new("RGB", (width, height), "white")
    copy = image.copy()
    copy.thumbnail((width, height), Image.Resampling.LANCZOS)
    cell.paste(copy, ((width - copy.width) // 2, (height - copy.height) // 2))
    return cell


def reconstruction_grid(
    model_dir: str | os.PathLike,
    files: Sequence[Path],
    *,
    locate: bool = True,
    cell: int = 160,
    method: str = "locator",
) -> Image.Image:
    """One row a photo: the photo with the car's box (yellow) and the frame (white), what the model saw
    (mirrored when the car faced right), the reconstruction (mirrored back), each fitted in ``cell`` x
    ``cell / 2`` pixels (the photo in a ``cell`` square)."""
    model = runtime.load_model(model_dir)
    half = cell // 2
    grid = Image.new("RGB", (3 * (cell + 8), max(1, len(files)) * (cell + 8)), "white")
    draw_grid = ImageDraw.Draw(grid)
    for row, path in enumerate(files):
        framed = framing.photo_reconstruct(model, path, locate=locate, method=method)
        photo = runtime.open_source(path)
        shown = _fit(photo, cell, cell)
        scale = min(cell / photo.width, cell / photo.height)
        offset = ((cell - round(photo.width * scale)) // 2, (cell - round(photo.height * scale)) // 2)
        draw = ImageDraw.Draw(shown)
        for box, colour, width in ((framed.frame, "white", 1), (framed.box, (245, 196, 0), 3)):
            if box is not None:
                draw.rectangle(
                    [
                        offset[0] + box.left * scale,
                        offset[1] + box.top * scale,
                        offset[0] + box.right * scale - 1,
                        offset[1] + box.bottom * scale - 1,
                    ],
                    outline=colour,
                    width=width,
                )
        y = row * (cell + 8)
        grid.paste(shown, (0, y))
        grid.paste(_fit(framed.result.model_input, cell, half), (cell + 8, y + half // 2))
        grid.paste(_fit(framed.result.reconstruction, cell, half), (2 * (cell + 8), y + half // 2))
        words = "no car" if framed.car_found is False else (framed.facing or "")
        draw_grid.text((cell + 10, y + 2), f"{words}{' (mirrored)' if framed.mirrored else ''}", fill="black")
    return grid


def read_boxes(path: Path) -> dict[str, framing.Box]:
    """A CSV with columns ``file,left,top,right,bottom`` (photo pixels) -> file name -> box."""
    with open(path, newline="") as handle:
        return {
            row["file"]: framing.Box(int(row["left"]), int(row["top"]), int(row["right"]), int(row["bottom"]))
            for row in csv.DictReader(handle)
        }


def held_out_names(model: runtime.Model, checkpoint: Path | None) -> set[str]:
    """Validation file names: from a training checkpoint (needs torch) or the model's metadata."""
    if checkpoint is not None:
        import torch

        return set(torch.load(checkpoint, map_location="cpu", weights_only=False)["val_names"])
    names = (model.metadata.get("data") or {}).get("val_names")
    if not names:
        raise ValueError(f"{model.model_dir} records no validation names (export with --data)")
    return set(names)


def _read_facings(path: Path) -> dict[str, str]:
    from ml.orientation import read_labels

    return read_labels(path)


def _human(result: dict[str, Any]) -> str:
    lines = [f"model {result['model']}: {result['n']} images ({result['skipped']} unreadable)"]
    lines.append(
        f"  model       psnr {result.get('psnr', float('nan')):6.2f} dB  ssim {result.get('ssim', float('nan')):.3f}"
        f"  mse {result.get('mse', float('nan')):.5f}  kl {result.get('kl', float('nan')):.1f} nats"
    )
    for key, label in (
        ("baseline_mean_psnr", "mean image"),
        ("baseline_thumb8_psnr", "8x8 thumb"),
        ("baseline_thumb16_psnr", "16x16 thumb"),
    ):
        if key in result:
            lines.append(f"  {label:<11} psnr {result[key]:6.2f} dB")
    for view, label in (("side", "side views"), ("head_on", "head-on views")):
        if f"psnr_{view}" in result:
            lines.append(
                f"  {label:<13} {result[f'n_{view}']} photos: psnr {result[f'psnr_{view}']:.2f} dB, 16x16 thumb"
                f" {result.get(f'baseline_thumb16_psnr_{view}', float('nan')):.2f} dB,"
                f" kl {result[f'kl_{view}']:.1f} nats"
            )
    if "same_car_top1" in result:
        lines.append(
            f"  same car: reconstruction nearest its own photo {result['same_car_top1']:.1%} (chance"
            f" {1 / result['n']:.1%}), facing the same way {result['orientation_agreement']:.1%},"
            f" colour off by {result['colour_error']:.1f}/255"
        )
    if "box_iou_mean" in result:
        lines.append(f"  car boxes: mean IoU {result['box_iou_mean']:.2f}, IoU >= 0.5 for {result['box_hit_rate']:.0%}")
    if "ood_auroc" in result:
        medians = (result.get("car_likeness_median", float("nan")), result.get("noncar_likeness_median", float("nan")))
        lines.append(
            f"  cars vs {result['n_noncars']} non-cars: AUROC {result['ood_auroc']:.3f},"
            f" car-likeness median {medians[0]:.2f} vs {medians[1]:.2f}"
        )
    if "noncar_false_accept_rate" in result:
        lines.append(
            f"  car check: {result['car_false_reject_rate']:.1%} of cars told no car was found,"
            f" {result['noncar_false_accept_rate']:.1%} of non-cars told they are a car"
        )
    if result.get("orientation_accuracy") is not None:
        lines.append(
            f"  facing: {result['orientation_accuracy']:.1%} of {result['orientation_rows']} labelled side views right"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ml.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=runtime.DEFAULT_MODEL_DIR, help="exported model directory")
    parser.add_argument("--data", type=Path, nargs="+", required=True, help="folder(s) of car photos")
    parser.add_argument("--noncars", type=Path, help="folder of photos of other things (adds ood_auroc, FAR)")
    split = parser.add_mutually_exclusive_group()
    split.add_argument("--held-out", action="store_true", help="only the validation images recorded in the model")
    split.add_argument("--val-of", type=Path, metavar="CHECKPOINT", help="only this checkpoint's validation images")
    parser.add_argument("--limit", type=int, help="use only the first N photos (of each folder)")
    parser.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default 1)")
    parser.add_argument(
        "--grid",
        type=Path,
        help="also write a PNG of the first 16 photos: box, frame, what the model saw, reconstruction",
    )
    parser.add_argument(
        "--no-search", action="store_true", help="give the model each whole photo (no car search; how export measures)"
    )
    parser.add_argument(
        "--boxes",
        type=Path,
        metavar="CSV",
        help="true car boxes (columns file,left,top,right,bottom): adds box_iou_mean",
    )
    parser.add_argument(
        "--finder",
        choices=("locator", "vae"),
        default="locator",
        help="how the car is found: the locator CNN (the site's) or the VAE's own box search",
    )
    parser.add_argument(
        "--orientation-labels", type=Path, metavar="CSV", help="file,facing hand labels (adds orientation_accuracy)"
    )
    parser.add_argument(
        "--facings",
        type=Path,
        metavar="CSV",
        help="with --no-search: file,facing of every photo (ml/labels/facings.csv): faced left, per view",
    )
    args = parser.parse_args(argv)
    if args.facings and not args.no_search:
        parser.error("--facings replaces the site's own facing: use it with --no-search")
    try:
        files = [f for folder in args.data for f in list_images(folder)]
        noncars = list_images(args.noncars) if args.noncars else None
    except FileNotFoundError as error:
        parser.error(str(error))
    if args.held_out or args.val_of:
        names = held_out_names(runtime.load_model(args.model), args.val_of)
        files = [f for f in files if f.name in names]
    if args.limit:
        files = files[: args.limit]
        noncars = noncars[: args.limit] if noncars else noncars
    if not files:
        parser.error(f"no images to evaluate in {args.data}")
    boxes = read_boxes(args.boxes) if args.boxes else None
    labels = None
    if args.orientation_labels:
        from ml.orientation import read_labels

        labels = read_labels(args.orientation_labels)
    result = evaluate(
        args.model,
        files,
        noncars,
        threads=args.threads,
        locate=not args.no_search,
        boxes=boxes,
        method=args.finder,
        orientation_labels=labels,
        facings=_read_facings(args.facings) if args.facings else None,
    )
    if args.grid:
        reconstruction_grid(args.model, files[:16], locate=not args.no_search, method=args.finder).save(args.grid)
    print(_human(result))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
