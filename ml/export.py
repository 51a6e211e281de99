"""Torch checkpoint -> ONNX model directory for ``ml.runtime`` (torch needed here only).

    python -m ml.export runs/default/best.pt --out ml/weights/default --data ../shared/data/cars

Writes ``encoder.onnx`` (``x [B, C, H, W]`` -> ``mu, logvar [B, D]``), ``decoder.onnx``
(``z [B, D]`` -> ``image [B, C, H, W]``), both with a dynamic batch dimension, BatchNorm folded
(eval mode), weights inside the ``.onnx`` file, opset 18 and IR version 9 so that onnxruntime
1.16.3 (the Lambda stack) loads them as well as the current release; and ``metadata.json``.

With ``--data`` (the folder the checkpoint was trained on) it also measures the exported model on
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
    data_dir: str | os.PathLike | None = None,
    name: str | None = None,
    opset: int = OPSET,
    int8: bool = True,
) -> Path:
    """Export a training checkpoint to a model directory for ``ml.runtime``; returns ``out_dir``.

    ``data_dir`` is the folder the checkpoint was trained on: with it, the metadata gets validation
    metrics and scoring calibration (from the checkpoint's validation images) and the directory a
    ``mean_image.png`` of its training images. ``name`` prefixes the version string (default: the
    output directory's name). With ``data_dir`` and ``int8`` the fully connected layers are then
    quantised to int8 if the validation images' PSNR drops by less than 0.05 dB (``ml.quantize``);
    ``metadata["quantization"]`` records the check either way.
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
            metadata.update(_measure(tmp, metadata, config.model, Path(data_dir), checkpoint.get("val_names", [])))
        (tmp / runtime.METADATA_FILE).write_text(json.dumps(metadata, indent=1) + "\n")
        if data_dir is not None and int8:
            val_names = set(checkpoint.get("val_names", []))
            val_files = [f for f in list_images(Path(data_dir)) if f.name in val_names]
            quantize.model_quantize(tmp, val_files, source=f"{data_dir} (validation split)")
        _atomic_replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _measure(
    model_dir: Path, metadata: dict[str, Any], config: ModelConfig, data_dir: Path, val_names: list[str]
) -> dict[str, Any]:
    """Mean image of the training split, validation metrics, scoring calibration, the latent space's
    principal components and 2-D map (from the training split's latent means)."""
    from ml import evaluate

    files = list_images(data_dir)
    held_out = set(val_names)
    train_files = [f for f in files if f.name not in held_out]
    val_files = [f for f in files if f.name in held_out]
    if not val_files:
        raise ValueError(f"none of the checkpoint's {len(val_names)} validation images are in {data_dir}")
    started = time.monotonic()
    images = load_images(train_files, config)
    mean = mean_image(images.pixels, images.boxes, config.pad_value)
    Image.fromarray(np.clip(np.rint(mean * 255), 0, 255).astype(np.uint8).transpose(1, 2, 0)).save(
        model_dir / MEAN_IMAGE_FILE
    )
    # Evaluate the exported ONNX model itself (not the torch one) on the held-out images.
    (model_dir / runtime.METADATA_FILE).write_text(json.dumps({**metadata, "mean_image": MEAN_IMAGE_FILE}))
    model = runtime.Model(model_dir)
    pairs = evaluate.PairStore()
    records = evaluate.score_files(model, val_files, pairs)
    summary = {**evaluate.summarize(records), **evaluate.same_car_measures(pairs)}
    calibration = evaluate.calibrate(records)
    latent_space = latent.latent_space_fit(latent.encode_pixels(model, images.pixels), source=str(data_dir))
    print(
        f"measured on {summary['n']} validation images in {time.monotonic() - started:.0f}s: "
        f"psnr {summary['psnr']:.2f} dB, ssim {summary['ssim']:.3f}",
        file=sys.stderr,
    )
    return {
        "mean_image": MEAN_IMAGE_FILE,
        "mean_image_from": {"images": len(images), "source": str(data_dir)},
        "metrics": {"split": "validation", "source": str(data_dir), **summary},
        "calibration": calibration,
        **latent_space,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ml.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="a training checkpoint (best.pt)")
    parser.add_argument("--out", type=Path, required=True, help="model directory to write")
    parser.add_argument("--data", type=Path, help="the training photos: adds metrics, calibration, mean image")
    parser.add_argument("--name", help="version prefix (default: the output directory's name)")
    parser.add_argument("--fp32", action="store_true", help="never quantise (see ml/quantize.py)")
    args = parser.parse_args(argv)
    if not args.checkpoint.is_file():
        parser.error(f"no such checkpoint: {args.checkpoint}")
    if args.data is not None and not args.data.is_dir():
        parser.error(f"no such folder: {args.data}")
    torch.set_num_threads(1)
    out = export_checkpoint(args.checkpoint, args.out, data_dir=args.data, name=args.name, int8=not args.fp32)
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
