"""Reading a folder of photos into one in-memory array for training (numpy + Pillow)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ml.config import ModelConfig
from ml.decode import ImageDecodeError
from ml.preprocess import prepare

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


@dataclass
class ImageSet:
    """``pixels`` uint8 ``[N, C, H, W]``; ``boxes`` int32 ``[N, 4]``; ``names`` the file names."""

    pixels: np.ndarray
    boxes: np.ndarray
    names: list[str]
    skipped: list[str]

    def __len__(self) -> int:
        return len(self.names)

    def subset(self, index: np.ndarray) -> ImageSet:
        return ImageSet(self.pixels[index], self.boxes[index], [self.names[i] for i in index], [])

    def summary(self) -> dict:
        aspect = (self.boxes[:, 2] - self.boxes[:, 0]) / np.maximum(1, self.boxes[:, 3] - self.boxes[:, 1])
        return {
            "images": len(self),
            "skipped": len(self.skipped),
            "fill_fraction": float(masks(self.boxes, *self.pixels.shape[2:]).mean()) if len(self) else 0.0,
            "frame_aspect_median": float(np.median(aspect)) if len(self) else 0.0,
        }


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly in ``folder`` (sorted, so runs are reproducible)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no such folder: {folder}")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def masks(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """``[N, 1, H, W]`` float32 validity masks from letterbox boxes."""
    rows = np.arange(height)[None, :, None]
    cols = np.arange(width)[None, None, :]
    inside = (
        (rows >= boxes[:, 1, None, None])
        & (rows < boxes[:, 3, None, None])
        & (cols >= boxes[:, 0, None, None])
        & (cols < boxes[:, 2, None, None])
    )
    return inside[:, None].astype(np.float32)


def load_images(
    files: list[Path], config: ModelConfig, cache_dir: Path | None = None, progress: bool = False
) -> ImageSet:
    """Preprocess every file once; unreadable files are skipped and listed, never fatal.

    With ``cache_dir`` the result is kept in an ``.npz`` keyed by the file list and the input
    shape, so a resumed run does not decode thousands of JPEGs again.
    """
    cache = images_cache_file(files, config, cache_dir) if cache_dir else None
    if cache and cache.exists():
        data = np.load(cache, allow_pickle=False)
        return ImageSet(data["pixels"], data["boxes"], list(data["names"]), list(data["skipped"]))
    pixels, boxes, names, skipped = [], [], [], []
    iterator = files
    if progress:
        from tqdm import tqdm

        iterator = tqdm(files, desc="reading images", unit="img")
    for path in iterator:
        try:
            prepared = prepare(path, config)
        except ImageDecodeError:
            skipped.append(Path(path).name)
            continue
        pixels.append(np.rint(prepared.array * 255).astype(np.uint8))
        boxes.append(prepared.box)
        names.append(Path(path).name)
    shape = (0, config.channels, config.height, config.width)
    result = ImageSet(
        np.stack(pixels) if pixels else np.zeros(shape, np.uint8),
        np.array(boxes, dtype=np.int32).reshape(-1, 4),
        names,
        skipped,
    )
    if cache:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp.npz")
        np.savez(
            tmp,
            pixels=result.pixels,
            boxes=result.boxes,
            names=np.array(names, dtype=str),
            skipped=np.array(skipped, dtype=str),
        )
        tmp.replace(cache)
    return result


def images_cache_file(files: list[Path], config: ModelConfig, cache_dir: Path) -> Path:
    """The ``.npz`` in ``cache_dir`` that ``load_images`` keeps for this file list (in this order) and input
    shape; ``ml.export`` reads a training run's cache from there when it exists."""
    key = hashlib.sha256(
        json.dumps([[str(f) for f in files], config.height, config.width, config.channels, config.pad_value]).encode()
    ).hexdigest()[:16]
    return Path(cache_dir) / f"images-{key}.npz"


def images_mirror(images: ImageSet, mirror: np.ndarray) -> ImageSet:
    """``images`` with the photos where ``mirror`` (bool ``[N]``) is set mirrored left-right, letterbox box
    and all, exactly as ``ml.train`` mirrors a right-facing photo to face left (the pixels ``[..., ::-1]``,
    the box ``(W - right, top, W - left, bottom)``). A new ImageSet; ``images`` is unchanged."""
    mirror = np.asarray(mirror, bool)
    if mirror.shape != (len(images),):
        raise ValueError(f"mirror has shape {mirror.shape}, expected ({len(images)},)")
    pixels, boxes = images.pixels.copy(), images.boxes.copy()
    width = pixels.shape[3]
    pixels[mirror] = pixels[mirror][..., ::-1]
    boxes[mirror, 0], boxes[mirror, 2] = width - images.boxes[mirror, 2], width - images.boxes[mirror, 0]
    return ImageSet(pixels, boxes, list(images.names), list(images.skipped))


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/validation split: ``(train_index, val_index)``; at least one of each when n >= 2."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = min(max(1, round(n * val_fraction)), n - 1) if n >= 2 else 0
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def facing_flips(names: list[str], facings_csv: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Canonical direction from a ``file,facing`` CSV (see ``ml.orientation``).

    Returns ``(mirror, symmetric)``, bool ``[N]`` each: ``mirror`` for photos that face right (turned
    to face left), ``symmetric`` for head-on ``front`` / ``rear`` photos (free to mirror at random).
    Raises ``ValueError`` when a photo has no row, so a run never mixes directions by accident.
    """
    from ml.orientation import read_labels

    labels = read_labels(facings_csv)
    missing = [name for name in names if name not in labels]
    if missing:
        raise ValueError(f"{facings_csv} has no facing for {len(missing)} photos, e.g. {missing[:3]}")
    facing = np.array([labels[name] for name in names])
    return facing == "right", np.isin(facing, ["front", "rear"])
