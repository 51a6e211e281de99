"""Train the facing classifier on hand labels and export it to ONNX (torch; see ``ml/orientation.py``).

    python -m ml.train_orientation --labels ml/labels/orientation.csv \\
        --data ../shared/data/cars ../shared/data/cars-more --out ml/weights/orientation \\
        --framed 2 --backgrounds ../shared/data/noncars --epochs 15 --height 48

The labelled photos are split by a hash of their file name: 30% are held out (``test``) and never
used for training or for choosing anything; the rest train the model. ``--validation PERCENT`` sets
aside about that share of the training rows (a second hash of the name) to choose settings on; the
shipped model is trained without it, on all training rows. The script reports the accuracy on the
left/right rows (the measure of issue 10), over all four labels, and the confusion matrix, for the
validation and held-out parts, and writes them into ``metadata.json`` beside ``facing.onnx``.

The network (``FacingNet``): four 3x3 conv / BatchNorm / ReLU / 2x2 max-pool stages (16-32-64-96
channels) on a 2:1 letterboxed input, then two linear heads on the flattened features ``a = f(x)``
and ``b = f(mirror(x))``: ``side = w . a - w . b`` (log-odds of left over right; mirroring the photo
flips its sign exactly) and ``view = V (a + b) + c`` (side / front / rear; unchanged by mirroring).
Training mirrors half of each batch (a mirrored left is a right), jitters brightness and contrast
and zooms out by up to 25% (a framed car has a margin that tight crops lack). ``--framed COPIES``
adds that many copies of each training photo as the site would see it: pasted into a photo without a
car and cut to the shipped locator's frame (``framed_copies``), whose box is often off by a fair
margin. On the validation rows this lifted accuracy on tight crops from 80.8% to 85.7% and on such
framed photos from 69.8% to 77.6% (245 side views; 2 copies, 15 epochs against 30 without). A 48x96 input
(``--height 48``) got 87.1% of 132 validation side views against 84.8% at 32x64 (stop 19; 4 framed copies at
32x64: 87.1%), so the shipped classifier uses it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ml.config import ModelConfig
from ml.orientation import (
    FACINGS,
    METADATA_FILE,
    MODEL_FILE,
    VIEWS,
    FacingClassifier,
    orientation_accuracy,
    read_labels,
)
from ml.preprocess import prepare

# Input frame (2:1, like the VAE's); --height changes it.
HEIGHT = 32
PAD = 0.5
TEST_PERCENT = 30


def is_test(name: str) -> bool:
    """The held-out 30%: decided by the file name alone, so it never changes with the label file."""
    return int(hashlib.sha256(name.encode()).hexdigest(), 16) % 100 < TEST_PERCENT


def is_validation(name: str, percent: int) -> bool:
    """About ``percent``% of the training rows, set aside to choose settings on (a second hash of the name)."""
    return int(hashlib.sha256(("val" + name).encode()).hexdigest(), 16) % 100 < percent


class FacingNet(nn.Module):
    """``x [B, 3, H, W]`` in [0, 1] -> ``side [B]`` (left-vs-right log-odds), ``view [B, 3]`` logits."""

    def __init__(self, height: int = HEIGHT, channels: tuple[int, ...] = (16, 32, 64, 96)) -> None:
        super().__init__()
        self.height = height
        layers: list[nn.Module] = []
        previous = 3
        for count in channels:
            layers += [nn.Conv2d(previous, count, 3, padding=1, bias=False), nn.BatchNorm2d(count), nn.ReLU()]
            layers.append(nn.MaxPool2d(2))
            previous = count
        self.features = nn.Sequential(*layers)
        size = previous * (height >> len(channels)) * (2 * height >> len(channels))
        self.dropout = nn.Dropout(0.3)
        self.side_head = nn.Linear(size, 1, bias=False)
        self.view_head = nn.Linear(size, len(VIEWS))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.dropout(self.features(x).flatten(1))
        b = self.dropout(self.features(torch.flip(x, dims=[3])).flatten(1))
        return (self.side_head(a) - self.side_head(b)).squeeze(1), self.view_head(a + b)


def _augment(x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random mirror (returned as +-1 per image), brightness/contrast jitter, zoom-out and shift."""
    count = len(x)
    mirror = torch.rand(count, generator=generator) < 0.5
    x = torch.where(mirror[:, None, None, None], torch.flip(x, dims=[3]), x)
    contrast = 1 + 0.3 * (torch.rand(count, 1, 1, 1, generator=generator) - 0.5)
    brightness = 0.15 * (torch.rand(count, 1, 1, 1, generator=generator) - 0.5)
    x = (x - PAD) * contrast + PAD + brightness
    theta = torch.zeros(count, 2, 3)
    scale = 1 + 0.33 * torch.rand(count, generator=generator) - 0.08  # output shows 0.92x to 1.25x the frame
    theta[:, 0, 0] = scale
    theta[:, 1, 1] = scale
    theta[:, :, 2] = 0.12 * (torch.rand(count, 2, generator=generator) - 0.5)
    grid = nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    x = nn.functional.grid_sample(x - PAD, grid, padding_mode="zeros", align_corners=False) + PAD
    return x.clamp(0, 1), torch.where(mirror, -1.0, 1.0)


def load_labelled(labels: dict[str, str], folders: list[Path], height: int = HEIGHT) -> tuple[np.ndarray, list[str]]:
    """Prepared inputs ``[N, 3, height, 2 * height]`` float32 for the labelled photos found in ``folders``."""
    config = ModelConfig(height=height, width=2 * height, pad_value=PAD, widths=())
    arrays, names = [], []
    for name in sorted(labels):
        path = next((folder / name for folder in folders if (folder / name).is_file()), None)
        if path is not None:
            arrays.append(prepare(str(path), config).array)
            names.append(name)
    return np.stack(arrays), names


def framed_copies(
    names: list[str], folders: list[Path], backgrounds: Path, copies: int, height: int = HEIGHT, seed: int = 0
) -> tuple[np.ndarray, list[str]]:
    """``copies`` framed versions of each photo: ``[N * copies, 3, height, 2 * height]`` and their names.

    Each is the photo pasted into a random photo of ``backgrounds`` (``ml.composites.composite``; only
    the half the locator trains on, ``ml.composites.held_out_split``, so the other half stays free for
    measuring), found
    by the shipped car locator and cut to its frame (``ml.framing``), as the site frames an upload: the
    box is imprecise (mean IoU about 0.67 on such composites), which tight crops never show. Seeded.
    Raises ``FileNotFoundError`` where the locator's weights are missing.
    """
    import random

    from ml.composites import BACKGROUND_EVERY, composite, held_out_split
    from ml.data import list_images
    from ml.framing import MARGIN, frame_for, load_locator
    from ml.preprocess import open_image

    locator = load_locator()
    if locator is None:
        raise FileNotFoundError("the car locator (ml/weights/locator) is needed for --framed")
    config = ModelConfig(height=height, width=2 * height, pad_value=PAD, widths=())
    scenes, _held_out = held_out_split(list_images(backgrounds), set(), BACKGROUND_EVERY)
    rng = random.Random(seed)
    arrays, kept = [], []
    for name in names:
        path = next(folder / name for folder in folders if (folder / name).is_file())
        photo = open_image(path)
        for _ in range(copies):
            scene, _box = composite(photo, open_image(rng.choice(scenes)), rng)
            _logit, box = locator.locate(scene)
            frame = frame_for(box, scene.size, locator.metadata.get("margin", MARGIN))
            arrays.append(prepare(scene.crop((frame.left, frame.top, frame.right, frame.bottom)), config).array)
            kept.append(name)
    return np.stack(arrays), kept


def train(x: np.ndarray, facings: list[str], epochs: int, seed: int = 0, log=print) -> FacingNet:
    """Fit :class:`FacingNet` on prepared inputs and their facing labels."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.from_numpy(x)
    side = torch.tensor([{"left": 1.0, "right": -1.0}.get(f, 0.0) for f in facings])
    view = torch.tensor([{"left": 0, "right": 0, "front": 1, "rear": 2}[f] for f in facings])
    net = FacingNet(height=x.shape[2])
    optimizer = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-3)
    steps = epochs * ((len(x) + 31) // 32)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps)
    started = time.monotonic()
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(len(x), generator=generator)
        total = 0.0
        for start in range(0, len(x), 32):
            batch = order[start : start + 32]
            images, sign = _augment(inputs[batch], generator)
            side_logit, view_logit = net(images)
            target = side[batch] * sign
            is_side = target != 0
            loss = nn.functional.cross_entropy(view_logit, view[batch])
            if is_side.any():
                loss = loss + nn.functional.binary_cross_entropy_with_logits(
                    side_logit[is_side], (target[is_side] > 0).float()
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += float(loss.detach()) * len(batch)
        if (epoch + 1) % 5 == 0 or epoch + 1 == epochs:
            log(f"epoch {epoch + 1}/{epochs}: loss {total / len(x):.3f}, {time.monotonic() - started:.0f}s")
    net.eval()
    return net


def export(net: FacingNet, out: Path) -> dict:
    """Write ``facing.onnx`` (``x [B, 3, H, W]`` -> ``side_logit [B]``, ``view_logits [B, 3]``) into ``out``."""
    import onnx

    net.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            net,
            (torch.rand(2, 3, net.height, 2 * net.height),),
            None,
            dynamo=True,
            opset_version=18,
            input_names=["x"],
            output_names=["side_logit", "view_logits"],
            dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},),
            external_data=False,
            verbose=False,
        )
    proto = program.model_proto
    proto.ir_version = min(proto.ir_version, 9)  # onnxruntime 1.16.3 (Lambda) reads IR <= 9
    onnx.checker.check_model(proto, full_check=True)
    path = out / MODEL_FILE
    onnx.save_model(proto, str(path), save_as_external_data=False)
    return {"sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "bytes": path.stat().st_size}


def _measure_only(out: Path, labels_file: Path, x: np.ndarray, rows: list[str], labels: dict[str, str]) -> int:
    """Measure the classifier in ``out`` on the held-out rows ``x`` (``[N, 3, H, W]``, named ``rows``) and rewrite
    its metadata's ``held_out`` (with the SHA-256 of the labels file it was measured against)."""
    classifier = FacingClassifier(out)
    predicted = {n: f.label for n, f in zip(rows, classifier.predict_arrays(x), strict=True)}
    metadata = json.loads((out / METADATA_FILE).read_text())
    metadata["held_out"] = orientation_accuracy(predicted, {n: labels[n] for n in rows})
    metadata["held_out_labels_sha256"] = hashlib.sha256(labels_file.read_bytes()).hexdigest()
    tmp = out / f".{METADATA_FILE}.tmp"
    tmp.write_text(json.dumps(metadata, indent=1))
    tmp.replace(out / METADATA_FILE)
    print(json.dumps({"part": "held_out", **{k: v for k, v in metadata["held_out"].items() if k != "confusion"}}))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ml.train_orientation", description=__doc__.split("\n\n")[0])
    parser.add_argument("--labels", type=Path, required=True, help="file,facing CSV of hand labels")
    parser.add_argument("--data", type=Path, nargs="+", required=True, help="folders holding the labelled photos")
    parser.add_argument("--out", type=Path, required=True, help="model directory to write")
    parser.add_argument(
        "--extra-labels", type=Path, help="more file,facing rows used for training only (never held out)"
    )
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--height", type=int, default=HEIGHT, help="input height in pixels (width: twice that)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--framed",
        type=int,
        default=0,
        metavar="COPIES",
        help="also train on this many locator-framed composites of each training photo (needs --backgrounds)",
    )
    parser.add_argument("--backgrounds", type=Path, help="photos without cars, for --framed")
    parser.add_argument(
        "--validation",
        type=int,
        default=0,
        metavar="PERCENT",
        help="set aside about this share of the training rows to choose settings on (reported, not trained on)",
    )
    parser.add_argument(
        "--measure-only",
        action="store_true",
        help="train nothing: measure the classifier already in --out on the held-out rows of --labels (after the"
        " labels were corrected) and rewrite its metadata's held_out",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    labels = read_labels(args.labels)
    extra = {n: f for n, f in (read_labels(args.extra_labels) if args.extra_labels else {}).items() if n not in labels}
    if args.measure_only:  # the classifier's own input size, not --height
        args.height = json.loads((args.out / METADATA_FILE).read_text())["input"]["height"]
    x, names = load_labelled({**labels, **extra}, args.data, args.height)
    # Only rows of --labels are ever held out; --extra-labels rows always train.
    test = np.array([name in labels and is_test(name) for name in names])
    validation = np.array(
        [name in labels and not t and is_validation(name, args.validation) for name, t in zip(names, test, strict=True)]
    )
    fit = ~test & ~validation
    labels = {**labels, **extra}
    if args.measure_only:
        return _measure_only(args.out, args.labels, x[test], [n for n, t in zip(names, test, strict=True) if t], labels)
    counts = f"{int(fit.sum())} train, {int(validation.sum())} validation, {int(test.sum())} held out"
    print(f"{len(names)} labelled photos found: {counts}", file=sys.stderr)
    started = time.monotonic()
    train_x, train_names = x[fit], [n for n, f in zip(names, fit, strict=True) if f]
    if args.framed:
        if args.backgrounds is None:
            parser.error("--framed needs --backgrounds")
        framed_x, framed_names = framed_copies(
            train_names, args.data, args.backgrounds, args.framed, args.height, args.seed
        )
        train_x, train_names = np.concatenate([train_x, framed_x]), train_names + framed_names
        print(f"{len(framed_names)} framed copies added", file=sys.stderr)
    net = train(
        train_x,
        [labels[n] for n in train_names],
        args.epochs,
        args.seed,
        log=lambda line: print(line, file=sys.stderr, flush=True),
    )
    seconds = time.monotonic() - started
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.out.parent) as tmp:
        tmp_dir = Path(tmp)
        info = export(net, tmp_dir)
        metadata = {
            "format": "carsite-facing-classifier",
            "input": {
                "height": args.height,
                "width": 2 * args.height,
                "pad_value": PAD,
                "preprocessing": "letterbox (ml.preprocess)",
            },
            "outputs": {"side_logit": "[B] log-odds left over right", "view_logits": f"[B, 3] logits of {list(VIEWS)}"},
            "labels": str(args.labels),
            "extra_labels": str(args.extra_labels) if args.extra_labels else None,
            "train_rows": int(fit.sum()),
            "validation_rows": int(validation.sum()),
            "test_rows": int(test.sum()),
            "epochs": args.epochs,
            "framed_copies": args.framed,
            "seed": args.seed,
            "train_seconds": round(seconds, 1),
            "file": info,
        }
        (tmp_dir / METADATA_FILE).write_text(json.dumps(metadata, indent=1))
        # Measure the exported graph, as the site runs it, on the rows it did not train on.
        classifier = FacingClassifier(tmp_dir)
        # A tuning run (--validation) is never measured on the held-out rows: settings are chosen on
        # validation alone, and the held-out figure is taken once, of the model trained without it.
        parts = (("validation", validation),) if args.validation else (("held_out", test),)
        for key, part in parts:
            if part.any():
                rows = [n for n, p in zip(names, part, strict=True) if p]
                predicted = {n: f.label for n, f in zip(rows, classifier.predict_arrays(x[part]), strict=True)}
                metadata[key] = orientation_accuracy(predicted, {n: labels[n] for n in rows})
        (tmp_dir / METADATA_FILE).write_text(json.dumps(metadata, indent=1))
        for name in (MODEL_FILE, METADATA_FILE):
            (tmp_dir / name).replace(args.out / name)
    for key in ("validation", "held_out"):
        if key in metadata:
            metrics = metadata[key]
            print(json.dumps({"part": key, **{k: v for k, v in metrics.items() if k != "confusion"}}))
            print(f"{key} confusion (rows: label, columns: predicted " + " ".join(FACINGS) + ")", file=sys.stderr)
            for label in FACINGS:
                cells = " ".join(f"{metrics['confusion'][label][p]:5d}" for p in FACINGS)
                print(f"  {label:>5}: {cells}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
