"""Torch checkpoint -> ONNX model directory for ``ml.runtime`` (torch needed here only).

    python -m ml.export runs/default/best.pt --out ml/weights/default --data ../shared/data/cars
    python -m ml.export runs/canonical/best.pt --out DIR --data ../shared/data/cars ../shared/data/cars-more

Writes ``encoder.onnx`` (``x [B, C, H, W]`` -> ``mu, logvar [B, D]``), ``decoder.onnx``
(``z [B, D]`` -> ``image [B, C, H, W]``), both with a dynamic batch dimension, BatchNorm folded
(eval mode), weights inside the ``.onnx`` file, opset 18 and IR version 9 so that onnxruntime
1.16.3 (the Lambda stack) loads them as well as the current release; and ``metadata.json``.

With ``--data`` (the folder or folders the checkpoint was trained on, in training's order; a
checkpoint trained with a ``facings`` file has its right-facing photos mirrored here too, as training
saw them, and the file must be the one training used) it also measures the exported model on
the checkpoint's validation images (``metrics``), stores the scoring ``calibration`` derived from
them, the principal components of the training images' latent means (``latent_pca``) and a 2-D map
of the latent space (``latent_map``; see ``ml/latent.py``), and writes ``mean_image.png``: the
per-pixel mean of the training images' model inputs (letterbox bars excluded), the reference
predictor ``ml.evaluate`` reports as ``baseline_mean_psnr``. ``loss_curve.png`` is copied from
beside the checkpoint when present (the validation reconstructions are not: they show training
photos, whose licence keeps them out of the repository).

The directory is written to a temporary sibling and renamed into place, so a crash never leaves a
half-written model; files in an existing output directory that export does not produce (the
``MODEL_CARD.md``) are carried over.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from ml import latent, quantize, runtime
from ml.config import ModelConfig, TrainConfig
from ml.data import list_images, load_images
from ml.model import VAE, count_parameters
from ml.onnx_rewrite import rewrite_decoder_tail

OPSET = 18
# onnxruntime 1.16.3 reads IR version <= 9; opset 18 needs IR >= 8.
MAX_IR_VERSION = 9
MEAN_IMAGE_FILE = "mean_image.png"
# Only the loss curve: validation reconstructions show the training photos, whose licence keeps
# them out of the repository (``python -m ml.evaluate --grid`` draws them locally).
REPORT_FILES = ("loss_curve.png",)
PRODUCED = {runtime.ENCODER_FILE, runtime.DECODER_FILE, runtime.METADATA_FILE, MEAN_IMAGE_FILE, *REPORT_FILES}

PREPROCESSING = {
    "method": "letterbox",
    "description": (
        "EXIF orientation applied; converted to RGB, transparent pixels composited on white; scaled with "
        "bicubic resampling (keeping the aspect ratio) to fit the model's height x width frame, centred, "
        "bars filled with pad_value; pixel values / 255 in [0, 1]. Metrics and scores use the pixels "
        "inside the letterbox box only."
    ),
    "resample": "bicubic",
    "exif_transpose": True,
    "alpha_background": [255, 255, 255],
    "value_range": [0.0, 1.0],
    "layout": "NCHW",
}


class _EncoderGraph(nn.Module):
    def __init__(self, model: VAE) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.encode(x)


class _DecoderGraph(nn.Module):
    def __init__(self, model: VAE) -> None:
        super().__init__()
        self.model = model

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.model.decode(z)


def count_flops(model: VAE) -> float:
    """Multiply-adds x 2 of one image's reconstruction (encoder + decoder), in GFLOP.

    Convolutions and linear layers only: BatchNorm folds into the convolutions at export and the
    activations are elementwise, both negligible next to the matrix work.
    """
    macs = 0

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal macs
        if isinstance(module, nn.Conv2d):
            kernel = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            macs += output.numel() * kernel
        elif isinstance(module, nn.ConvTranspose2d):
            kernel = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
            macs += inputs[0].numel() * kernel
        elif isinstance(module, nn.Linear):
            macs += output.numel() * module.in_features

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d | nn.Linear)
    ]
    try:
        config = model.config
        with torch.no_grad():
            model.reconstruct(torch.zeros(1, config.channels, config.height, config.width))
    finally:
        for handle in handles:
            handle.remove()
    return 2 * macs / 1e9


def export_onnx(model: VAE, out_dir: Path, opset: int = OPSET) -> dict[str, Any]:
    """Write ``encoder.onnx`` and ``decoder.onnx`` for ``model`` (put in eval mode) into ``out_dir``."""
    import onnx

    model.eval()
    config = model.config
    batch = torch.export.Dim("batch", min=1, max=4096)
    x = torch.rand(2, config.channels, config.height, config.width)
    z = torch.randn(2, config.latent_dim)
    graphs = [
        (runtime.ENCODER_FILE, _EncoderGraph(model), x, ["x"], ["mu", "logvar"]),
        (runtime.DECODER_FILE, _DecoderGraph(model), z, ["z"], ["image"]),
    ]
    info: dict[str, Any] = {}
    for name, graph, example, inputs, outputs in graphs:
        graph.eval()
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the exporter's deprecation chatter
            program = torch.onnx.export(
                graph,
                (example,),
                None,
                dynamo=True,
                opset_version=opset,
                input_names=inputs,
                output_names=outputs,
                dynamic_shapes=({0: batch},),
                external_data=False,
                verbose=False,
            )
        proto = program.model_proto
        rewritten = rewrite_decoder_tail(proto) if name == runtime.DECODER_FILE else False
        opsets = {entry.domain or "ai.onnx": entry.version for entry in proto.opset_import}
        if opsets.get("ai.onnx", 0) > 19 or set(opsets) - {"ai.onnx"}:
            raise RuntimeError(f"{name}: exported opsets {opsets}; onnxruntime 1.16.3 needs ai.onnx <= 19 only")
        # The exporter stamps the newest IR version its onnx package knows; the graph uses nothing
        # newer than IR 9 (no 4-bit types, no overloaded functions), so restamping is exact.
        proto.ir_version = min(proto.ir_version, MAX_IR_VERSION)
        onnx.checker.check_model(proto, full_check=True)
        path = out_dir / name
        onnx.save_model(proto, str(path), save_as_external_data=False)
        info[name] = {
            "inputs": inputs,
            "outputs": outputs,
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "bytes": path.stat().st_size,
            "opset": opsets["ai.onnx"],
            "ir_version": proto.ir_version,
            "rewrites": ["decoder_tail_phase_space"] if rewritten else [],
        }
    return info


def mean_image(images: np.ndarray, boxes: np.ndarray, pad_value: float) -> np.ndarray:
    """Per-pixel mean ``[C, H, W]`` of uint8 model inputs ``[N, C, H, W]`` over the images that
    cover each pixel (bars excluded); ``pad_value`` where no image does."""
    _, channels, height, width = images.shape
    total = np.zeros((channels, height, width), np.float64)
    count = np.zeros((height, width), np.float64)
    for pixels, (left, top, right, bottom) in zip(images, boxes, strict=True):
        total[:, top:bottom, left:right] += pixels[:, top:bottom, left:right]
        count[top:bottom, left:right] += 1
    mean = np.full((channels, height, width), pad_value, np.float64)
    covered = count > 0
    mean[:, covered] = total[:, covered] / count[covered] / 255.0
    return mean.astype(np.float32)


def _atomic_replace(tmp: Path, out: Path) -> None:
    """Move the finished ``tmp`` directory to ``out``, keeping files export does not produce."""
    if out.exists():
        for extra in out.iterdir():
            if extra.name not in PRODUCED and not (tmp / extra.name).exists():
                (shutil.copytree if extra.is_dir() else shutil.copy2)(extra, tmp / extra.name)
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old)
    else:
        tmp.rename(out)


def export_checkpoint(
    checkpoint_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    data_dir: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    name: str | None = None,
    opset: int = OPSET,
    *,
    facings: str | os.PathLike | None = None,
    finish: Callable[[Path], None] | None = None,
    int8: bool = True,
) -> Path:
    """Export a training checkpoint to a model directory for ``ml.runtime``; returns ``out_dir``.

    ``data_dir`` is the folder, or the folders, the checkpoint was trained on (as ``ml.train --data``
    took them): with it, the metadata gets validation metrics and scoring calibration (from the
    checkpoint's validation images) and the directory a ``mean_image.png`` of its training images, all
    on the photos as training saw them: turned to face left by the checkpoint config's ``facings``
    file (``facings`` replaces its path; its SHA-256 must be the one training recorded). ``name``
    prefixes the version string (default: the output directory's name). ``finish`` is called with the
    finished temporary directory just before it replaces ``out_dir`` (a later step of a release, e.g.
    the car check's refit and the model card: an exception there leaves ``out_dir`` as it was).
    With ``data_dir`` and ``int8`` the fully connected layers are then quantised to int8 if the
    validation images' PSNR drops by less than 0.05 dB (``ml.quantize``), before ``finish``;
    ``metadata["quantization"]`` records the check either way.
    Raises ValueError when the data or the facings file are not the ones training used.
    """
    from ml.train import load_checkpoint

    checkpoint_path = Path(checkpoint_path)
    out = Path(out_dir)
    model, checkpoint = load_checkpoint(checkpoint_path)
    config = TrainConfig.from_dict(checkpoint["config"])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; a model directory is ordinary
    try:
        files = export_onnx(model, tmp, opset=opset)
        digest = hashlib.sha256()
        for file in (runtime.ENCODER_FILE, runtime.DECODER_FILE):
            digest.update(bytes.fromhex(files[file]["sha256"]))
        version = f"{name or out.name}-{digest.hexdigest()[:12]}"
        state = checkpoint.get("state", {})
        metadata: dict[str, Any] = {
            "format": "carsite-vae-onnx",
            "format_version": runtime.FORMAT_VERSION,
            "version": version,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "files": files,
            "model": config.model.to_dict(),
            "training": {
                "config": config.to_dict(),
                "checkpoint": checkpoint_path.name,
                "epochs_run": state.get("epoch"),
                "best_epoch": state.get("best_epoch"),
                "seconds": round(float(state.get("seconds", 0.0)), 1),
                "best_val": state.get("best_val"),
                "history": state.get("history", []),
            },
            "preprocessing": {
                **PREPROCESSING,
                "height": config.model.height,
                "width": config.model.width,
                "pad_value": config.model.pad_value,
            },
            # The validation names let ``ml.evaluate --held-out`` measure on unseen images without torch.
            "data": {**(checkpoint.get("data") or {}), "val_names": list(checkpoint.get("val_names", []))},
            "parameters": count_parameters(model),
            "gflop": float(f"{count_flops(model):.6g}"),
            "metrics": None,
            "calibration": None,
            "mean_image": None,
            latent.PCA_KEY: None,
            latent.MAP_KEY: None,
        }
        for report in REPORT_FILES:
            if (checkpoint_path.parent / report).is_file():
                shutil.copy2(checkpoint_path.parent / report, tmp / report)
        if data_dir is not None:
            folders = [Path(data_dir)] if isinstance(data_dir, str | os.PathLike) else [Path(d) for d in data_dir]
            facing_labels, facings_info = checkpoint_facings(checkpoint, facings)
            cache_dir = checkpoint_path.parent / "cache"
            metadata.update(
                _measure(
                    tmp, metadata, config.model, folders, checkpoint.get("val_names", []), facing_labels, cache_dir
                )
            )
            metadata["data"] = {**metadata["data"], "folders": [str(f) for f in folders], "facings": facings_info}
        (tmp / runtime.METADATA_FILE).write_text(json.dumps(metadata, indent=1) + "\n")
        if data_dir is not None and int8:
            val_files = data_files(folders, checkpoint.get("val_names", []))[1]
            source = f"{', '.join(map(str, folders))} (validation split)"
            quantize.model_quantize(tmp, val_files, facings=facing_labels, source=source)
        if finish is not None:
            finish(tmp)
        _atomic_replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def checkpoint_facings(
    checkpoint: dict[str, Any], path: str | os.PathLike | None = None
) -> tuple[dict[str, str] | None, dict[str, Any] | None]:
    """The facings training used: ``({file name: facing}, {"file", "sha256", "counts"})``, or ``(None, None)``
    for a checkpoint trained without (config ``facings`` empty). ``path`` replaces the config's path
    (relative to the working directory, as ``ml.train`` read it). Raises ValueError when the file is
    missing or its SHA-256 is not the one the checkpoint recorded: photos would face another way than
    in training."""
    from ml.orientation import read_labels

    configured = (checkpoint.get("config") or {}).get("facings")
    if not configured:
        return None, None
    file = Path(path or configured)
    if not file.is_file():
        raise ValueError(f"the checkpoint was trained with facings {configured}; {file} is not there")
    sha256 = hashlib.sha256(file.read_bytes()).hexdigest()
    if sha256 != checkpoint.get("facings_sha256"):
        raise ValueError(
            f"{file} (SHA-256 {sha256[:12]}) is not the facings file the checkpoint was trained with "
            f"({str(checkpoint.get('facings_sha256'))[:12]}): restore that file"
        )
    labels = read_labels(file)
    counts = {facing: sum(1 for v in labels.values() if v == facing) for facing in sorted(set(labels.values()))}
    return labels, {"file": str(configured), "sha256": sha256, "counts": counts}


def data_files(folders: Sequence[Path], val_names: Sequence[str]) -> tuple[list[Path], list[Path]]:
    """``(all files, validation files)`` of ``folders`` in training's order (folder by folder, sorted), the
    validation ones by the checkpoint's ``val_names``. Raises ValueError when a folder is missing, two
    folders hold the same file name (names identify photos in the split and the facings), or any
    validation image is not found (a folder training used was left out)."""
    files: list[Path] = []
    for folder in folders:
        try:
            files.extend(list_images(folder))
        except FileNotFoundError as error:
            raise ValueError(str(error)) from error
    seen: set[str] = set()
    duplicates = [f.name for f in files if f.name in seen or seen.add(f.name)]
    if duplicates:
        raise ValueError(f"{len(duplicates)} file names occur in more than one folder, e.g. {duplicates[:3]}")
    held_out = set(val_names)
    val_files = [f for f in files if f.name in held_out]
    if not val_files or len(val_files) < len(held_out):
        where = ", ".join(map(str, folders))
        raise ValueError(
            f"{len(val_files)} of the checkpoint's {len(held_out)} validation images are in {where}: "
            "pass every folder the checkpoint was trained on"
        )
    return files, val_files


def canonical_training_images(
    files: list[Path], val_names: Sequence[str], config: ModelConfig, facings: dict[str, str] | None, cache_dir: Path
) -> Any:
    """The training split's model inputs as training saw them (an ``ml.data.ImageSet``): right-facing photos
    mirrored (``ml.data.images_mirror``). Reads a training run's image cache in ``cache_dir`` when it has
    this very file list, and never writes one (the run's folder is not ours)."""
    from ml.data import images_cache_file, images_mirror

    cache = images_cache_file(files, config, cache_dir)
    images = load_images(files, config, cache_dir=cache_dir if cache.is_file() else None)
    held_out = set(val_names)
    images = images.subset(np.array([i for i, n in enumerate(images.names) if n not in held_out], dtype=np.int64))
    if facings is not None:
        missing = [n for n in images.names if n not in facings]
        if missing:
            raise ValueError(f"the facings file has no facing for {len(missing)} photos, e.g. {missing[:3]}")
        images = images_mirror(images, np.array([facings[n] == "right" for n in images.names], bool))
    return images


def validation_metrics(
    model: runtime.Model, val_files: list[Path], facings: dict[str, str] | None, folders: Sequence[Path]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Metrics of the exported model on the validation photos, faced left as in training: the means of
    ``ml.evaluate.summarize`` and ``same_car_measures``; per view (``psnr_side``, ``psnr_head_on``,
    thumbnails, KL, ``n_...``: ``ml.evaluate.summarize_groups``) with facings; per folder in ``by_folder``.
    Returns ``(metrics, per-photo records)`` (the records calibrate the car-likeness score)."""
    from ml import evaluate

    pairs = evaluate.PairStore()
    records = evaluate.score_files(model, val_files, pairs, facings=facings)
    metrics: dict[str, Any] = {
        "split": "validation",
        "source": ", ".join(map(str, folders)),
        **evaluate.summarize(records),
        **evaluate.same_car_measures(pairs),
    }
    if facings is not None:
        metrics["faced_left"] = "right-facing photos mirrored (facings file), as in training"
        metrics.update(evaluate.summarize_groups(records, evaluate.view_groups(facings)))
    if len(folders) > 1:
        by_folder = evaluate.summarize_groups(
            records, {folder.name: [f.name for f in val_files if f.parent == folder] for folder in folders}
        )
        metrics["by_folder"] = {
            folder.name: {
                key: by_folder[f"{key}_{folder.name}"]
                for key in evaluate.GROUP_KEYS
                if f"{key}_{folder.name}" in by_folder
            }
            for folder in folders
        }
    return metrics, records


def _measure(
    model_dir: Path,
    metadata: dict[str, Any],
    config: ModelConfig,
    folders: Sequence[Path],
    val_names: list[str],
    facings: dict[str, str] | None = None,
    cache_dir: Path | None = None,
) -> dict[str, Any]:
    """Mean image of the training split, validation metrics, scoring calibration, the latent space's
    principal components and 2-D map (from the training split's latent means), all on the photos as
    training saw them (faced left with ``facings``)."""
    from ml import evaluate

    files, val_files = data_files(folders, val_names)
    source = ", ".join(map(str, folders))
    started = time.monotonic()
    images = canonical_training_images(files, val_names, config, facings, cache_dir or model_dir / "no-cache")
    mean = mean_image(images.pixels, images.boxes, config.pad_value)
    Image.fromarray(np.clip(np.rint(mean * 255), 0, 255).astype(np.uint8).transpose(1, 2, 0)).save(
        model_dir / MEAN_IMAGE_FILE
    )
    # Evaluate the exported ONNX model itself (not the torch one) on the held-out images.
    (model_dir / runtime.METADATA_FILE).write_text(json.dumps({**metadata, "mean_image": MEAN_IMAGE_FILE}))
    model = runtime.Model(model_dir)
    metrics, records = validation_metrics(model, val_files, facings, folders)
    calibration = evaluate.calibrate(records)
    latent_space = latent.latent_space_fit(latent.encode_pixels(model, images.pixels), source=source)
    print(
        f"measured on {metrics['n']} validation images in {time.monotonic() - started:.0f}s: "
        f"psnr {metrics['psnr']:.2f} dB, ssim {metrics['ssim']:.3f}",
        file=sys.stderr,
    )
    return {
        "mean_image": MEAN_IMAGE_FILE,
        "mean_image_from": {"images": len(images), "source": source, "faced_left": facings is not None},
        "metrics": metrics,
        "calibration": calibration,
        **latent_space,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ml.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="a training checkpoint (best.pt)")
    parser.add_argument("--out", type=Path, required=True, help="model directory to write")
    parser.add_argument(
        "--data",
        type=Path,
        nargs="+",
        help="the training photos' folder(s), as ml.train took them: adds metrics, calibration, mean image",
    )
    parser.add_argument(
        "--facings", type=Path, help="the facings CSV training used (default: the checkpoint config's path)"
    )
    parser.add_argument("--name", help="version prefix (default: the output directory's name)")
    parser.add_argument("--fp32", action="store_true", help="never quantise (see ml/quantize.py)")
    args = parser.parse_args(argv)
    if not args.checkpoint.is_file():
        parser.error(f"no such checkpoint: {args.checkpoint}")
    for folder in args.data or []:
        if not folder.is_dir():
            parser.error(f"no such folder: {folder}")
    torch.set_num_threads(1)
    try:
        out = export_checkpoint(
            args.checkpoint, args.out, data_dir=args.data, name=args.name, facings=args.facings, int8=not args.fp32
        )
    except ValueError as error:
        parser.error(str(error))
    metadata = json.loads((out / runtime.METADATA_FILE).read_text())
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    print(
        json.dumps(
            {
                "out": str(out),
                "version": metadata["version"],
                "bytes": size,
                "parameters": metadata["parameters"],
                "gflop": metadata["gflop"],
                "metrics": metadata["metrics"],
                "quantization": metadata.get("quantization"),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
