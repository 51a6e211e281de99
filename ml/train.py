"""Train the VAE on a folder of photos.

    python -m ml.train --data ../shared/data/cars --out runs/default --config ml/configs/default.json
    python -m ml.train --data ../shared/data/cars ../shared/data/cars-more --out runs/canonical \
        --config ml/configs/canonical.json --resume

Splits off a seeded validation set, shows a progress bar with the loss terms, checkpoints every
epoch (``last.pt``, and ``best.pt`` on a validation improvement), resumes with ``--resume``, drops
the learning rate once and then stops when validation plateaus, and writes ``history.json``,
``loss_curve.png`` and ``val_reconstructions.png``. ``--dry-run`` trains a tiny model for a few
steps on tiny generated images (it needs no data and runs in the test suite).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ml.config import ModelConfig, TrainConfig
from ml.data import ImageSet, facing_flips, list_images, load_images, masks, split_indices
from ml.losses import vae_loss
from ml.model import VAE, count_parameters

ProgressFn = Callable[[dict[str, Any]], None]
StopFn = Callable[[], bool]


class Cancelled(Exception):
    """Raised when ``should_stop`` asks a run to end; the last checkpoint stays valid."""


@dataclass
class TrainResult:
    out_dir: Path
    best_checkpoint: Path
    epochs_run: int
    best_epoch: int
    best_val: dict[str, float]
    seconds: float
    stopped_early: bool


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _augment(x: np.ndarray, boxes: np.ndarray, config: TrainConfig, rng: np.random.Generator) -> None:
    """Shift each photo inside its frame and jitter its colours, in place (``x`` ``[B,C,H,W]``).

    Only the photo moves; the frame keeps the letterbox grey, and ``boxes`` follow the photo
    (clipped to the frame), so masks and losses stay exact.
    """
    height, width = x.shape[2:]
    pad = config.model.pad_value
    for i in range(len(x)):
        left, top, right, bottom = boxes[i]
        photo = x[i, :, top:bottom, left:right].copy()
        if config.jitter > 0:
            j = config.jitter
            brightness, contrast, saturation = 1 + rng.uniform(-j, j, 3)
            grey = photo.mean(axis=0, keepdims=True)
            photo = grey + (photo - grey) * saturation
            photo = (photo - photo.mean()) * contrast + photo.mean()
            photo = np.clip(photo * brightness, 0.0, 1.0)
        dx, dy = rng.integers(-config.shift, config.shift + 1, 2) if config.shift > 0 else (0, 0)
        new_left, new_top = max(0, left + dx), max(0, top + dy)
        new_right, new_bottom = min(width, right + dx), min(height, bottom + dy)
        x[i] = pad
        x[i, :, new_top:new_bottom, new_left:new_right] = photo[
            :, new_top - (top + dy) : new_bottom - (top + dy), new_left - (left + dx) : new_right - (left + dx)
        ]
        boxes[i] = (new_left, new_top, new_right, new_bottom)


def _batches(
    images: ImageSet,
    index: np.ndarray,
    batch_size: int,
    flip: np.ndarray | None,
    augment: tuple[TrainConfig, np.random.Generator] | None = None,
):
    """Yield ``(x [B,C,H,W] float, mask [B,1,H,W])`` for ``index`` in order."""
    height, width = images.pixels.shape[2:]
    for start in range(0, len(index), batch_size):
        chunk = index[start : start + batch_size]
        x = images.pixels[chunk].astype(np.float32) / 255.0
        boxes = images.boxes[chunk].copy()
        if flip is not None:
            # Mirror photo and letterbox together; cars face both ways in the data.
            f = flip[start : start + batch_size]
            x[f] = x[f][..., ::-1]
            boxes[f, 0], boxes[f, 2] = width - boxes[f, 2], width - boxes[f, 0]
        if augment is not None:
            _augment(x, boxes, *augment)
        yield torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(masks(boxes, height, width))


@torch.no_grad()
def _ema_update(ema: VAE, model: VAE, decay: float, step: int) -> None:
    """Polyak averaging of weights *and* BatchNorm statistics (averaged weights with the current
    model's statistics would not match), with the usual ``(1 + t) / (10 + t)`` ramp so the random
    initial weights are forgotten quickly."""
    decay = min(decay, (1 + step) / (10 + step))
    for averaged, current in zip(ema.state_dict().values(), model.state_dict().values(), strict=True):
        if averaged.dtype.is_floating_point:
            averaged.mul_(decay).add_(current, alpha=1 - decay)
        else:
            averaged.copy_(current)


@torch.no_grad()
def evaluate_split(
    model: VAE,
    images: ImageSet,
    index: np.ndarray,
    config: TrainConfig,
    beta: float,
    flip: np.ndarray | None = None,
    groups: dict[str, np.ndarray] | None = None,
) -> dict[str, float]:
    """Validation metrics from the posterior mean: MSE and PSNR on valid pixels, KL, and loss.

    ``flip`` (bool, aligned with ``index``) mirrors those photos first (the canonical direction);
    ``groups`` {name: bool mask aligned with ``index``} adds ``psnr_<name>``, the mean over that group.
    """
    model.eval()
    se_sum, n_sum, kl_sum, psnr_sum = 0.0, 0.0, 0.0, 0.0
    psnrs = []
    for x, mask in _batches(images, index, 64, flip):
        mu, logvar = model.encode(x)
        recon = model.decode(mu)
        se = (((recon - x) ** 2) * mask).flatten(1).sum(1)
        n = mask.flatten(1).sum(1) * x.shape[1]
        se_sum += float(se.sum())
        n_sum += float(n.sum())
        kl_sum += float((0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)).sum())
        psnr = 10 * torch.log10(1.0 / (se / n).clamp_min(1e-10))
        psnr_sum += float(psnr.sum())
        psnrs.append(psnr.numpy())
    count = len(index)
    mse = se_sum / n_sum
    kl = kl_sum / count
    per_image_values = n_sum / count
    if config.recon == "calibrated":
        loss = 0.5 * per_image_values * (math.log(max(mse, 1e-6)) + 1) + beta * kl
    else:
        loss = se_sum / count + beta * kl
    result = {"loss": loss, "mse": mse, "psnr": psnr_sum / count, "kl": kl}
    per_image = np.concatenate(psnrs)
    for name, member in (groups or {}).items():
        if member.any():
            result[f"psnr_{name}"] = float(per_image[member].mean())
    return result


def thumbnail_psnr(images: ImageSet, index: np.ndarray, flip: np.ndarray | None = None, size: int = 16) -> np.ndarray:
    """Per-image PSNR (dB) ``[len(index)]`` of a ``size x size`` thumbnail of each photo (inside its
    letterbox box), the reference ``ml.evaluate`` reports as ``baseline_thumb16_psnr``."""
    from ml.runtime import crop_box, psnr_from_mse, thumbnail_mse

    values = []
    for i, image in enumerate(index):
        target = images.pixels[image].astype(np.float32) / 255.0
        if flip is not None and flip[i]:
            target = target[..., ::-1]  # the box moves with the photo (centring may be off by a pixel)
            left, top, right, bottom = images.boxes[image]
            box = (target.shape[2] - right, top, target.shape[2] - left, bottom)
        else:
            box = tuple(images.boxes[image])
        values.append(psnr_from_mse(thumbnail_mse(crop_box(target, box), size)))
    return np.array(values)


def beta_at(config: TrainConfig, epoch: float) -> float:
    """The KL weight at a (fractional) epoch: the schedule if there is one, else a linear warm-up."""
    if config.beta_schedule:
        points = config.beta_schedule
        return float(np.interp(epoch, [p[0] for p in points], [p[1] for p in points]))
    if config.beta_warmup_epochs <= 0:
        return config.beta
    return config.beta * min(1.0, epoch / config.beta_warmup_epochs)


def _save(path: Path, state: dict[str, Any]) -> None:
    # Write then rename: a run killed mid-save never leaves a truncated checkpoint behind.
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def train(
    config: TrainConfig,
    files: list[Path],
    out_dir: str | Path,
    resume: bool = False,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    show_bar: bool = True,
    max_steps: int | None = None,
) -> TrainResult:
    """Train on ``files`` and write checkpoints and reports to ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(config.threads)
    _seed_everything(config.seed)
    try:
        torch.use_deterministic_algorithms(True, warn_only=True)
    except AttributeError:  # pragma: no cover - very old torch
        pass

    images = load_images(files, config.model, cache_dir=out / "cache", progress=show_bar)
    if len(images) < 2:
        raise ValueError(f"need at least 2 readable images, found {len(images)} ({len(images.skipped)} unreadable)")
    train_index, val_index = split_indices(len(images), config.val_fraction, config.seed)
    # Canonical direction: photos facing right are mirrored (every epoch, and in validation);
    # random flips, if any, only for the head-on photos.
    mirror, symmetric = np.zeros(len(images), bool), np.ones(len(images), bool)
    facings_sha256 = None
    if config.facings:
        mirror, symmetric = facing_flips(images.names, config.facings)
        facings_sha256 = hashlib.sha256(Path(config.facings).read_bytes()).hexdigest()
    val_flip = mirror[val_index] if config.facings else None
    val_groups = {"side": ~symmetric[val_index], "head_on": symmetric[val_index]} if config.facings else {}
    model = VAE(config.model).to(memory_format=torch.channels_last)
    ema = None
    if config.ema_decay > 0:
        ema = VAE(config.model).to(memory_format=torch.channels_last)
        ema.load_state_dict(model.state_dict())
        ema.requires_grad_(False)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    state: dict[str, Any] = {
        "epoch": 0,
        "history": [],
        "best_loss": float("inf"),
        "best_epoch": -1,
        "bad_epochs": 0,
        "lr": config.lr,
        "seconds": 0.0,
    }
    last = out / "last.pt"
    if resume and last.exists():
        checkpoint = torch.load(last, map_location="cpu", weights_only=False)
        # The thread count changes speed, not the recipe: a run may resume with another one.
        if {**checkpoint["config"], "threads": config.threads} != config.to_dict():
            raise ValueError(f"{last} was trained with another config; use a new --out or the same --config")
        if checkpoint.get("facings_sha256") != facings_sha256:
            raise ValueError(f"{last} was trained with another {config.facings}; restore that file or use a new --out")
        model.load_state_dict(checkpoint.get("train_model", checkpoint["model"]))
        optimizer.load_state_dict(checkpoint["optimizer"])
        if ema is not None:
            ema.load_state_dict(checkpoint["model"])
        state = checkpoint["state"]
        torch.set_rng_state(checkpoint["torch_rng"])

    val_thumb16 = thumbnail_psnr(images, val_index, val_flip)
    data_summary = {
        **images.summary(),
        "val_thumb16_psnr": float(val_thumb16.mean()),
        **{f"val_thumb16_psnr_{name}": float(val_thumb16[m].mean()) for name, m in val_groups.items() if m.any()},
        "mirrored": int(mirror.sum()),
        "train": len(train_index),
        "val": len(val_index),
        "source": ", ".join(sorted({str(Path(f).parent) for f in files})),
    }
    generator = np.random.default_rng(config.seed)
    for _ in range(state["epoch"]):  # replay the shuffles so a resumed run matches an unbroken one
        generator.permutation(len(train_index))
        if config.hflip:
            generator.random(len(train_index))
    started = time.monotonic() - state["seconds"]
    stopped_early = False
    steps_per_epoch = math.ceil(len(train_index) / config.batch_size)
    steps = 0

    while state["epoch"] < config.epochs:
        epoch = state["epoch"]
        if epoch >= round(config.epochs * (1 - config.lr_final_fraction)):
            state["lr"] = min(state["lr"], config.lr_final)
        for group in optimizer.param_groups:
            group["lr"] = state["lr"]
        order = train_index[generator.permutation(len(train_index))]
        flips = generator.random(len(train_index)) < 0.5 if config.hflip else None
        if config.facings:
            flips = mirror[order] ^ (flips & symmetric[order] if flips is not None else False)
        model.train()
        totals = {"mse": 0.0, "kl": 0.0, "loss": 0.0}
        bar = None
        if show_bar:
            from tqdm import tqdm

            bar = tqdm(
                total=steps_per_epoch,
                desc=f"epoch {epoch + 1}/{config.epochs}",
                unit="batch",
                leave=False,
                file=sys.stderr,
            )
        augment = None
        if config.shift or config.jitter:
            # Its own generator per epoch, so a resumed run draws the same augmentations.
            augment = (config, np.random.default_rng([config.seed, epoch]))
        for step, (x, mask) in enumerate(_batches(images, order, config.batch_size, flips, augment)):
            if should_stop and should_stop():
                raise Cancelled(f"cancelled during epoch {epoch + 1}")
            beta = beta_at(config, epoch + step / steps_per_epoch)
            x = x.contiguous(memory_format=torch.channels_last)
            recon, mu, logvar = model(x)
            terms = vae_loss(x, recon, mu, logvar, mask, beta=beta, mode=config.recon)
            optimizer.zero_grad(set_to_none=True)
            terms.total.backward()
            optimizer.step()
            if ema is not None:
                state["steps"] = state.get("steps", 0) + 1
                _ema_update(ema, model, config.ema_decay, state["steps"])
            for key, value in (("mse", terms.mse), ("kl", terms.kl), ("loss", terms.total)):
                totals[key] += value.item()
            if bar:
                bar.set_postfix(mse=f"{float(terms.mse):.4f}", kl=f"{float(terms.kl):.1f}", beta=f"{beta:.2f}")
                bar.update()
            steps += 1
            if max_steps and steps >= max_steps:
                break
        if bar:
            bar.close()
        n_steps = step + 1
        served = ema if ema is not None else model
        val = evaluate_split(served, images, val_index, config, beta_at(config, epoch + 1), val_flip, val_groups)
        state["epoch"] = epoch + 1
        state["seconds"] = time.monotonic() - started
        record = {
            "epoch": epoch + 1,
            "lr": state["lr"],
            "beta": beta,
            "seconds": round(state["seconds"], 1),
            "train_mse": totals["mse"] / n_steps,
            "train_kl": totals["kl"] / n_steps,
            "val_mse": val["mse"],
            "val_psnr": val["psnr"],
            "val_kl": val["kl"],
            "val_loss": val["loss"],
            **{f"val_{key}": value for key, value in val.items() if key.startswith("psnr_")},
        }
        state["history"].append(record)

        best = state["best_loss"]
        improved = best == float("inf") or val["loss"] < best - config.min_delta * abs(best)
        checkpoint = {
            "config": config.to_dict(),
            "model": served.state_dict(),
            **({"train_model": model.state_dict()} if ema is not None else {}),
            "optimizer": optimizer.state_dict(),
            "state": state,
            "torch_rng": torch.get_rng_state(),
            "facings_sha256": facings_sha256,
            "data": data_summary,
            "val_names": [images.names[i] for i in val_index],
            "parameters": count_parameters(model),
        }
        # While beta moves the objective itself moves, so those epochs restart the comparison.
        objective_moved = beta_at(config, epoch) != beta_at(config, epoch + 1)
        if improved or objective_moved:
            state["best_loss"] = val["loss"]
            state["best_epoch"] = epoch + 1
            state["best_val"] = val
            state["bad_epochs"] = 0
            _save(out / "best.pt", checkpoint)
        else:
            state["bad_epochs"] += 1
        stop = False
        if state["bad_epochs"] >= config.patience:
            if state["lr"] > config.lr_final:
                state["lr"] = config.lr_final
                state["bad_epochs"] = 0
            else:
                stop = stopped_early = True
        _save(last, checkpoint)
        (out / "history.json").write_text(json.dumps(state["history"], indent=1))
        eta = state["seconds"] / state["epoch"] * (config.epochs - state["epoch"])
        line = (
            f"epoch {epoch + 1}: val psnr {val['psnr']:.2f} dB "
            f"(16x16 thumbnail {data_summary['val_thumb16_psnr']:.2f}), "
            f"mse {val['mse']:.5f}, kl {val['kl']:.1f}, "
            f"lr {record['lr']:g}, {state['seconds']:.0f}s"
        )
        print(line + (" *" if state["best_epoch"] == epoch + 1 else ""), file=sys.stderr, flush=True)
        if progress:
            progress({**record, "epochs": config.epochs, "eta_seconds": eta, "best_epoch": state["best_epoch"]})
        if stop or (max_steps and steps >= max_steps):
            break

    write_reports(out, config, images, val_index)
    return TrainResult(
        out_dir=out,
        best_checkpoint=out / "best.pt",
        epochs_run=state["epoch"],
        best_epoch=state["best_epoch"],
        best_val=state.get("best_val", {}),
        seconds=state["seconds"],
        stopped_early=stopped_early,
    )


def load_checkpoint(path: str | Path) -> tuple[VAE, dict[str, Any]]:
    """Rebuild the model from a checkpoint alone (it carries its config)."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    config = TrainConfig.from_dict(checkpoint["config"])
    model = VAE(config.model)
    model.load_state_dict(checkpoint["model"])
    model.eval()
    return model, checkpoint


def write_reports(out: Path, config: TrainConfig, images: ImageSet, val_index: np.ndarray) -> None:
    """``loss_curve.png`` (MSE and KL on separate axes) and ``val_reconstructions.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = json.loads((out / "history.json").read_text())
    epochs = [h["epoch"] for h in history]
    fig, (ax_mse, ax_kl) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax_mse.plot(epochs, [h["train_mse"] for h in history], label="train")
    ax_mse.plot(epochs, [h["val_mse"] for h in history], label="validation")
    ax_mse.set(title="reconstruction MSE per pixel", xlabel="epoch", yscale="log")
    ax_mse.legend()
    ax_kl.plot(epochs, [h["train_kl"] for h in history], label="train")
    ax_kl.plot(epochs, [h["val_kl"] for h in history], label="validation")
    ax_kl.set(title="KL divergence per image (nats)", xlabel="epoch")
    ax_kl.legend()
    fig.tight_layout()
    fig.savefig(out / "loss_curve.png", dpi=90)
    plt.close(fig)

    model, _ = load_checkpoint(out / "best.pt")
    grid_from_model(model, images, val_index[:8]).save(out / "val_reconstructions.png")


def grid_from_model(model: VAE, images: ImageSet, index: np.ndarray):
    """Originals on the top row, reconstructions below."""
    from PIL import Image

    x, _ = next(_batches(images, index, len(index), None))
    recon = model.reconstruct(x).numpy()
    height, width = x.shape[2:]
    grid = Image.new("RGB", (width * len(index), height * 2), "white")
    from ml.preprocess import to_image

    for column in range(len(index)):
        grid.paste(to_image(x[column].numpy()), (column * width, 0))
        grid.paste(to_image(recon[column]), (column * width, height))
    return grid


def _dry_run_data(folder: Path, count: int = 12) -> list[Path]:
    """Small generated pictures: coloured blocks on a light background, 2:1 and odd shapes."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    files = []
    for i in range(count):
        width, height = (int(rng.integers(40, 80)), int(rng.integers(16, 40)))
        image = Image.new("RGB", (width, height), (230, 230, 230))
        draw = ImageDraw.Draw(image)
        colour = tuple(int(c) for c in rng.integers(0, 255, 3))
        draw.rectangle((width // 6, height // 3, width - width // 6, height - 4), fill=colour)
        path = folder / f"dry_{i:02d}.png"
        image.save(path)
        files.append(path)
    return files


DRY_RUN_CONFIG = TrainConfig(
    model=ModelConfig(height=16, width=32, latent_dim=8, widths=(8, 16)),
    batch_size=4,
    epochs=2,
    beta_warmup_epochs=1,
    patience=1,
    threads=1,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ml.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, nargs="+", help="folder(s) of photos")
    parser.add_argument("--out", type=Path, help="folder for checkpoints and reports")
    parser.add_argument("--config", type=Path, help="JSON training config (ml/configs/*.json)")
    parser.add_argument("--epochs", type=int, help="maximum epochs (overrides the config)")
    parser.add_argument("--seed", type=int, help="random seed (overrides the config)")
    parser.add_argument("--threads", type=int, help="torch threads (overrides the config; 1 is best on a busy machine)")
    parser.add_argument("--limit", type=int, help="use only the first N photos")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    parser.add_argument("--dry-run", action="store_true", help="a few steps of a tiny model on tiny images")
    args = parser.parse_args(argv)

    if args.dry_run:
        config = DRY_RUN_CONFIG
        with tempfile.TemporaryDirectory() as tmp:
            files = list_images(args.data[0])[:12] if args.data else _dry_run_data(Path(tmp))
            result = train(config, files, args.out or Path(tmp) / "run", max_steps=4, show_bar=False)
            print(json.dumps({"dry_run": True, "epochs": result.epochs_run, **result.best_val}))
        return 0
    if not args.data or not args.out:
        parser.error("--data and --out are required (or use --dry-run)")
    config = TrainConfig.load(args.config) if args.config else TrainConfig()
    if args.epochs:
        config = config.replace(epochs=args.epochs)
    if args.seed is not None:
        config = config.replace(seed=args.seed)
    if args.threads:
        config = config.replace(threads=args.threads)
    try:
        files = [path for folder in args.data for path in list_images(folder)]
    except FileNotFoundError as error:
        parser.error(str(error))
    if args.limit:
        files = files[: args.limit]
    if not files:
        parser.error(f"no images in {args.data}")
    print(f"training on {len(files)} photos from {', '.join(map(str, args.data))} -> {args.out}", file=sys.stderr)
    result = train(config, files, args.out, resume=args.resume)
    print(
        json.dumps(
            {
                "best_checkpoint": str(result.best_checkpoint),
                "epochs": result.epochs_run,
                "best_epoch": result.best_epoch,
                "seconds": round(result.seconds, 1),
                "stopped_early": result.stopped_early,
                **result.best_val,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
