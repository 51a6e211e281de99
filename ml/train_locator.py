"""Train the car locator: a small CNN that says whether a photo holds a car and where (training only; torch).

    python -m ml.train_locator --cars ../shared/data/cars ../shared/data/cars-more \\
        --backgrounds ../shared/data/noncars --out runs/locator --minutes 25 [--resume]
    # --export-to ml/weights/locator writes locator.onnx + metadata.json there for ml/framing.py

The network sees the whole photo letterboxed into ``SIZE x SIZE`` and outputs ``[B, 5]``: a car
logit and the car's box ``(cx, cy, w, h)`` as fractions of the letterboxed square (a sigmoid).
Trained on pictures made on the fly (``sample``):

- a car crop pasted into a photo of something else at a random size and place (the box is the crop);
- a car crop alone, as the whole photo (most uploads are one car filling the picture);
- a photo of something else alone (no car);
- and into every one of these, 0-3 *distractor* rectangles cut from other non-car photos: a pasted
  rectangle's edges are then no evidence of a car, so the network has to learn the car, not the paste.

Held out, never trained on: the cars the default VAE held out (its ``val_names``), every 10th photo
of the other car folders, and every other non-car photo (``split``); ``ml.evaluate`` measures on
those. Checkpoints every ``--checkpoint-every`` steps into ``--out`` (``last.pt``), resumes with
``--resume``; deterministic for a seed only with one thread.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from ml.composites import BACKGROUND_EVERY, CAR_EVERY, held_out_split
from ml.data import list_images
from ml.framing import letterbox_square
from ml.preprocess import open_image

SIZE = 96
PAD = 128  # grey of the letterbox bars (0-255)
KEEP_LONGEST = 192  # photos are kept in memory at most this size (pixels)


class Locator(nn.Module):
    """``[B, 3, SIZE, SIZE]`` in [0, 1] -> ``[B, 5]``: car logit, then ``(cx, cy, w, h)`` in [0, 1]."""

    def __init__(self, widths: Sequence[int] = (12, 24, 48, 64, 96)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for index, width in enumerate(widths):  # each stage halves the size: 96 -> 3
            layers += [nn.Conv2d(channels, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
            if index >= 2:  # a second convolution where the maps are small (cheap), none on the large ones
                layers += [nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
            channels = width
        self.features = nn.Sequential(*layers)
        side = SIZE // 2 ** len(widths)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(channels * side * side, 128), nn.ReLU(), nn.Linear(128, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.head(self.features(x))
        return torch.cat([out[:, :1], torch.sigmoid(out[:, 1:])], dim=1)


def _load(paths: Sequence[Path]) -> list[Image.Image]:
    images = []
    for path in paths:
        image = open_image(path)
        image.thumbnail((KEEP_LONGEST, KEEP_LONGEST), Image.Resampling.LANCZOS)
        images.append(image)
    return images


def letterbox(image: Image.Image) -> tuple[np.ndarray, float, tuple[int, int]]:
    """A photo -> ``[3, SIZE, SIZE]`` float32 in [0, 1], its scale and ``(x, y)`` offset in the square."""
    return letterbox_square(image, SIZE, PAD)


def _scene(backgrounds: Sequence[Image.Image], rng: random.Random) -> Image.Image:
    """A random part of a random non-car photo, mirrored at random, at a random aspect ratio (0.6-2.2)."""
    bg = rng.choice(backgrounds)
    aspect = rng.uniform(0.6, 2.2)
    w = bg.width * rng.uniform(0.6, 1.0)
    h = w / aspect
    if h > bg.height:
        h = bg.height * rng.uniform(0.7, 1.0)
        w = min(bg.width, h * aspect)
    x, y = rng.uniform(0, bg.width - w), rng.uniform(0, bg.height - h)
    scene = bg.crop((round(x), round(y), round(x + w), round(y + h))).resize(
        (KEEP_LONGEST, round(KEEP_LONGEST / aspect))
    )
    return scene.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else scene


def _paste(scene: Image.Image, patch: Image.Image, rng: random.Random, width: tuple[float, float]) -> tuple[int, ...]:
    pw = scene.width * rng.uniform(*width)
    ph = pw * patch.height / patch.width
    if ph > scene.height * 0.95:
        ph = scene.height * rng.uniform(0.5, 0.95)
        pw = ph * patch.width / patch.height
    resized = patch.resize((max(4, round(pw)), max(4, round(ph))), Image.Resampling.BILINEAR)
    x = rng.randint(0, max(0, scene.width - resized.width))
    y = rng.randint(0, max(0, scene.height - resized.height))
    scene.paste(resized, (x, y))
    return x, y, x + resized.width, y + resized.height


def sample(
    cars: Sequence[Image.Image], backgrounds: Sequence[Image.Image], rng: random.Random
) -> tuple[np.ndarray, np.ndarray]:
    """One training picture (see the module docstring) -> ``([3, SIZE, SIZE], [5])``: car 0/1, then the box
    ``(cx, cy, w, h)`` in fractions of the square (zeros without a car)."""
    kind = rng.random()
    box: tuple[int, ...] | None = None
    if kind < 0.2:  # a car alone, the whole photo
        car = rng.choice(cars)
        scene = car.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else car.copy()
        box = (0, 0, scene.width, scene.height)
        distractors = 0
    else:
        scene = _scene(backgrounds, rng)
        distractors = rng.choice((0, 1, 1, 2, 3))
    for _ in range(distractors):
        other = rng.choice(backgrounds)
        w, h = other.width * rng.uniform(0.3, 0.9), other.height * rng.uniform(0.3, 0.9)
        x, y = rng.uniform(0, other.width - w), rng.uniform(0, other.height - h)
        _paste(scene, other.crop((round(x), round(y), round(x + w), round(y + h))), rng, (0.15, 0.6))
    if 0.2 <= kind < 0.65:  # a car pasted into the scene, on top of the distractors
        car = rng.choice(cars)
        car = car.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else car
        box = _paste(scene, car, rng, (0.25, 0.95))
    array, scale, (ox, oy) = letterbox(scene)
    # Colour jitter: brightness and contrast +-15%.
    array = np.clip((array - 0.5) * rng.uniform(0.85, 1.15) + 0.5 + rng.uniform(-0.08, 0.08), 0, 1)
    target = np.zeros(5, dtype=np.float32)
    if box is not None:
        left, top = ox + box[0] * scale, oy + box[1] * scale
        right, bottom = ox + box[2] * scale, oy + box[3] * scale
        target[:] = (
            1.0,
            (left + right) / 2 / SIZE,
            (top + bottom) / 2 / SIZE,
            (right - left) / SIZE,
            (bottom - top) / SIZE,
        )
    return array.astype(np.float32), target


def loss_fn(output: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Binary cross-entropy of the car logit, plus L1 of the box (weighted 5x) on pictures with a car."""
    has_car = target[:, 0]
    bce = nn.functional.binary_cross_entropy_with_logits(output[:, 0], has_car)
    l1 = (torch.abs(output[:, 1:] - target[:, 1:]).sum(1) * has_car).sum() / has_car.sum().clamp(min=1)
    return bce + 5 * l1, bce, l1


def export(model: Locator, path: Path) -> None:
    """Write the locator as ONNX (``x [B, 3, SIZE, SIZE]`` -> ``out [B, 5]``), opset 17, for onnxruntime 1.16+."""
    import onnx

    model.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(
            model,
            (torch.rand(1, 3, SIZE, SIZE),),
            str(path),
            input_names=["x"],
            output_names=["out"],
            dynamic_axes={"x": {0: "batch"}, "out": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    proto = onnx.load(str(path))
    proto.ir_version = min(proto.ir_version, 9)
    onnx.checker.check_model(proto, full_check=True)
    onnx.save_model(proto, str(path))


def export_dir(model: Locator, out: Path, training: dict[str, object]) -> None:
    """``out/locator.onnx`` and ``out/metadata.json``: the input size, and a car check that trusts the
    locator's logit alone (``ml.framing.locator_check``: a=1, b=0, c=0, threshold 0.5) until
    ``ml.evaluate`` measurements replace it."""
    export(model, out / "locator.onnx")
    metadata = {
        "format": "carsite-car-locator-onnx",
        "size": SIZE,
        "pad": PAD,
        "margin": 0.0,
        "check": {"a": 1.0, "b": 0.0, "c": 0.0, "threshold": 0.5},
        "training": training,
    }
    (out / "metadata.json").write_text(json.dumps(metadata, indent=1) + "\n")


def train(args: argparse.Namespace) -> dict[str, object]:
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    held_names: set[str] = set()
    if args.held_out_from:
        held_names = set(json.loads((args.held_out_from / "metadata.json").read_text())["data"]["val_names"])
    car_files = [f for folder in args.cars for f in list_images(folder)]
    car_train, _ = held_out_split(car_files, held_names, CAR_EVERY)
    bg_train, _ = held_out_split(list_images(args.backgrounds), set(), BACKGROUND_EVERY)
    started = time.monotonic()
    cars, backgrounds = _load(car_train), _load(bg_train)
    print(f"loaded {len(cars)} cars, {len(backgrounds)} backgrounds in {time.monotonic() - started:.0f}s", flush=True)
    model = Locator()
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    step = 0
    args.out.mkdir(parents=True, exist_ok=True)
    last = args.out / "last.pt"
    if args.resume and last.is_file():
        state = torch.load(last, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step = state["step"]
    rng = random.Random(args.seed + step)
    deadline = time.monotonic() + args.minutes * 60
    history = []
    model.train()
    while time.monotonic() < deadline and step < args.steps:
        # A tenth of the learning rate for the last 20% of the steps or of the time, whichever comes first.
        late = step >= args.steps * 0.8 or time.monotonic() > deadline - args.minutes * 12
        for group in optimizer.param_groups:
            group["lr"] = args.lr / 10 if late else args.lr
        batch = [sample(cars, backgrounds, rng) for _ in range(args.batch)]
        x = torch.from_numpy(np.stack([b[0] for b in batch]))
        y = torch.from_numpy(np.stack([b[1] for b in batch]))
        loss, bce, l1 = loss_fn(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step += 1
        history.append((step, bce.item(), l1.item()))
        if step % 50 == 0:
            recent = np.array(history[-50:])
            print(f"step {step} bce {recent[:, 1].mean():.3f} box L1 {recent[:, 2].mean():.3f}", flush=True)
        if step % args.checkpoint_every == 0:
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step}, last)
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step}, last)
    summary = {
        "steps": step,
        "batch": args.batch,
        "seconds": round(time.monotonic() - started),
        "cars": len(cars),
        "backgrounds": len(backgrounds),
        "final_bce": round(float(np.mean([h[1] for h in history[-100:]])), 4) if history else None,
        "final_box_l1": round(float(np.mean([h[2] for h in history[-100:]])), 4) if history else None,
    }
    (args.out / "summary.json").write_text(json.dumps(summary))
    if args.export_to:
        export_dir(model, args.export_to, summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ml.train_locator", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cars", type=Path, nargs="+", required=True)
    parser.add_argument("--backgrounds", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--held-out-from", type=Path, default=Path("ml/weights/default"), help="a model's val_names")
    parser.add_argument(
        "--export-to", type=Path, help="a folder: write locator.onnx and metadata.json there at the end"
    )
    parser.add_argument("--minutes", type=float, default=25.0)
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (more is slower on a busy machine)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint-every", type=int, default=200)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--export-only", action="store_true", help="export --out/last.pt to --export-to and stop")
    args = parser.parse_args(argv)
    if args.export_only:
        if not args.export_to:
            parser.error("--export-only needs --export-to")
        model = Locator()
        model.load_state_dict(torch.load(args.out / "last.pt", map_location="cpu", weights_only=False)["model"])
        summary_file = args.out / "summary.json"
        export_dir(model, args.export_to, json.loads(summary_file.read_text()) if summary_file.is_file() else {})
        return 0
    print(json.dumps(train(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
