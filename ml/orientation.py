"""Which way a car faces, so the VAE can always see it facing left (numpy + Pillow + onnxruntime).

    from ml.orientation import facing_predict
    facing = facing_predict(rgb)        # rgb: [H, W, 3] uint8, the framed car
    facing.label, facing.confidence     # "left" | "right" | "front" | "rear", probability in [0, 1]
    if facing.mirrored: rgb = rgb[:, ::-1]   # the model sees it facing left; mirror the output back

``facing`` is the direction the car's front points *as seen in the photo*: ``left`` and ``right`` for
side and three-quarter views, ``front`` and ``rear`` for mostly head-on views (mirroring those changes
nothing that matters, so they are left as they are). The original training photos all faced left;
``ml.train`` with a ``facings`` file trains on photos turned that way (see ``ml/configs/``).

The classifier is a small CNN (``ml/train_orientation.py``, torch) exported to ONNX in
``ml/weights/orientation/``. It is mirror-consistent by construction: its left/right logit is
``g(x) - g(mirror(x))``, so a mirrored photo gets exactly the opposite answer, and its view logits
(side / front / rear) come from features summed over the photo and its mirror image. Accuracy on
hand labels it was not trained or tuned on is in ``ml/weights/orientation/metadata.json`` and the
model card.

Also a command that labels whole folders for training (hand labels win where there are some)::

    python -m ml.orientation --data ../shared/data/cars ../shared/data/cars-more \\
        --labels ml/labels/orientation.csv --out ml/labels/facings.csv
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

from ml.config import ModelConfig
from ml.preprocess import prepare

FACINGS = ("left", "right", "front", "rear")
# The ONNX graph's ``view_logits`` output, in this order.
VIEWS = ("side", "front", "rear")
DEFAULT_DIR = Path(__file__).resolve().parent / "weights" / "orientation"
MODEL_FILE = "facing.onnx"
METADATA_FILE = "metadata.json"


@dataclass(frozen=True)
class Facing:
    """Where a car's front points in a photo.

    ``label`` is one of :data:`FACINGS`; ``confidence`` is its probability in [0, 1];
    ``probabilities`` maps all four labels to probabilities that sum to 1.
    """

    label: str
    confidence: float
    probabilities: dict[str, float]

    @property
    def mirrored(self) -> bool:
        """True when the photo should be mirrored left-right to face left (the car faces right)."""
        return self.label == "right"

    def to_dict(self) -> dict[str, object]:
        return {"label": self.label, "confidence": self.confidence, "probabilities": self.probabilities}


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def facings_from_logits(side: np.ndarray, view: np.ndarray) -> list[Facing]:
    """The graph's outputs -> one :class:`Facing` per image.

    ``side`` ``[B]``: log-odds that a side view faces left rather than right; ``view`` ``[B, 3]``:
    logits of side / front / rear. P(left) = P(side) * sigmoid(side), P(right) = P(side) *
    (1 - sigmoid(side)), P(front) and P(rear) as the view head says.
    """
    p_view = _softmax(np.asarray(view, dtype=np.float64))
    p_left = _sigmoid(np.asarray(side, dtype=np.float64))
    probs = np.stack([p_view[:, 0] * p_left, p_view[:, 0] * (1 - p_left), p_view[:, 1], p_view[:, 2]], axis=1)
    result = []
    for row in probs:
        best = int(row.argmax())
        result.append(
            Facing(FACINGS[best], float(row[best]), {name: float(p) for name, p in zip(FACINGS, row, strict=True)})
        )
    return result


class FacingClassifier:
    """An exported facing classifier (``facing.onnx`` + ``metadata.json`` in ``model_dir``).

    Raises ``FileNotFoundError`` when the directory lacks either file.
    """

    def __init__(self, model_dir: str | os.PathLike = DEFAULT_DIR, threads: int = 1) -> None:
        self.model_dir = Path(model_dir)
        self.metadata = json.loads((self.model_dir / METADATA_FILE).read_text())
        shape = self.metadata["input"]
        self.config = ModelConfig(height=shape["height"], width=shape["width"], pad_value=shape["pad_value"], widths=())
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(self.model_dir / MODEL_FILE), options, providers=["CPUExecutionProvider"]
        )

    def prepare(self, rgb: np.ndarray) -> np.ndarray:
        """``[H, W, 3]`` uint8 -> ``[3, h, w]`` float32 input: letterboxed like the VAE's (``ml.preprocess``)."""
        rgb = np.asarray(rgb)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or min(rgb.shape[:2]) < 1:
            raise ValueError(f"expected an [H, W, 3] uint8 array, got {rgb.dtype} {rgb.shape}")
        return prepare(Image.fromarray(rgb, "RGB"), self.config).array

    def predict_arrays(self, x: np.ndarray) -> list[Facing]:
        """Prepared inputs ``[B, 3, h, w]`` float32 in [0, 1] -> one :class:`Facing` each."""
        if len(x) == 0:
            return []
        side, view = self.session.run(["side_logit", "view_logits"], {"x": np.ascontiguousarray(x, dtype=np.float32)})
        return facings_from_logits(side, view)

    def predict(self, rgb: np.ndarray) -> Facing:
        """One framed car ``[H, W, 3]`` uint8 -> its :class:`Facing`.

        About 1 ms of ONNX Runtime on one core plus the resize: 6 ms (p50) for a 512x256 frame on this
        project's shared 2-core machine at load average 11.
        """
        return self.predict_arrays(self.prepare(rgb)[None])[0]

    def predict_batch(self, rgbs: Iterable[np.ndarray], batch: int = 64) -> list[Facing]:
        """Many framed cars, ``batch`` at a time."""
        result: list[Facing] = []
        chunk: list[np.ndarray] = []
        for rgb in rgbs:
            chunk.append(self.prepare(rgb))
            if len(chunk) == batch:
                result += self.predict_arrays(np.stack(chunk))
                chunk = []
        if chunk:
            result += self.predict_arrays(np.stack(chunk))
        return result


_default: FacingClassifier | None = None
_default_lock = threading.Lock()


def default_classifier() -> FacingClassifier:
    """The shipped classifier (``ml/weights/orientation``), loaded once per process."""
    global _default
    with _default_lock:
        if _default is None:
            _default = FacingClassifier(DEFAULT_DIR)
        return _default


def facing_predict(rgb: np.ndarray, classifier: FacingClassifier | None = None) -> Facing:
    """Which way the car in ``rgb`` (``[H, W, 3]`` uint8, the framed car, any size) faces.

    Returns a :class:`Facing`: ``label`` in {left, right, front, rear} (the direction the car's front
    points in the picture), ``confidence`` (the label's probability) and ``mirrored`` (True for
    ``right``: mirror the frame before the VAE, and the reconstruction after it). Raises
    ``ValueError`` for an array that is not ``[H, W, 3]`` uint8. Uses the shipped classifier unless
    ``classifier`` is given.
    """
    return (classifier or default_classifier()).predict(rgb)


def read_labels(path: str | os.PathLike) -> dict[str, str]:
    """``file,facing`` CSV -> {file name: facing}. Raises ``ValueError`` on an unknown facing."""
    labels = {}
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            facing = row["facing"].strip()
            if facing not in FACINGS:
                raise ValueError(f"{path}: unknown facing {facing!r} for {row['file']} (expected one of {FACINGS})")
            labels[Path(row["file"]).name] = facing
    return labels


def orientation_accuracy(predicted: dict[str, str], labels: dict[str, str]) -> dict[str, object]:
    """Agreement of ``predicted`` facings with hand ``labels`` (both {file name: facing}).

    ``orientation_accuracy``: the fraction of the labelled left/right photos (present in
    ``predicted``) predicted with the same label, the measure of issue 10 (a side view predicted
    ``front`` counts as wrong); ``orientation_rows`` how many there were; ``facing_accuracy`` the
    same over all four labels; ``confusion`` {label: {predicted: count}}. None when no row matches.
    """
    names = [name for name in labels if name in predicted]
    sides = [name for name in names if labels[name] in ("left", "right")]
    confusion = {a: {b: 0 for b in FACINGS} for a in FACINGS}
    for name in names:
        confusion[labels[name]][predicted[name]] += 1
    return {
        "orientation_accuracy": (sum(predicted[n] == labels[n] for n in sides) / len(sides) if sides else None),
        "orientation_rows": len(sides),
        "facing_accuracy": sum(predicted[n] == labels[n] for n in names) / len(names) if names else None,
        "confusion": confusion,
    }


def predict_files(classifier: FacingClassifier, files: Sequence[Path], batch: int = 64) -> dict[str, Facing]:
    """{file name: Facing} for photo files (whole photos: these are tight crops already)."""
    from ml.preprocess import open_image

    result = {}
    for start in range(0, len(files), batch):
        chunk = files[start : start + batch]
        arrays = [prepare(open_image(str(path)), classifier.config).array for path in chunk]
        for path, facing in zip(chunk, classifier.predict_arrays(np.stack(arrays)), strict=True):
            result[Path(path).name] = facing
    return result


def main(argv: list[str] | None = None) -> int:
    from ml.data import list_images

    parser = argparse.ArgumentParser(prog="python -m ml.orientation", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, nargs="+", required=True, help="folders of car photos")
    parser.add_argument("--model", type=Path, default=DEFAULT_DIR, help="exported facing classifier")
    parser.add_argument("--labels", type=Path, help="hand labels (file,facing): they win, and are scored")
    parser.add_argument("--out", type=Path, help="write file,facing,confidence,source for every photo")
    args = parser.parse_args(argv)
    classifier = FacingClassifier(args.model, threads=2)
    files = [path for folder in args.data for path in list_images(folder)]
    predicted = predict_files(classifier, files)
    labels = read_labels(args.labels) if args.labels else {}
    summary: dict[str, object] = {"photos": len(files)}
    if labels:
        summary.update(orientation_accuracy({n: f.label for n, f in predicted.items()}, labels))
    if args.out:
        tmp = args.out.with_suffix(".tmp")
        with open(tmp, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["file", "facing", "confidence", "source"])
            for name, facing in sorted(predicted.items()):
                if name in labels:
                    writer.writerow([name, labels[name], "1.0", "hand"])
                else:
                    writer.writerow([name, facing.label, f"{facing.confidence:.3f}", "model"])
        tmp.replace(args.out)
        counts: dict[str, int] = {}
        for name, facing in predicted.items():
            label = labels.get(name, facing.label)
            counts[label] = counts.get(label, 0) + 1
        summary["written"] = str(args.out)
        summary["counts"] = counts
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
