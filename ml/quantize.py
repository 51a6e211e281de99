"""Int8 weights for the VAE's fully connected layers, kept only if held-out PSNR holds (onnx + onnxruntime; no torch).

    python -m ml.quantize MODEL_DIR --data FOLDER [--sample 500] [--max-drop 0.05]

``ml.export`` calls ``model_quantize`` on every export with ``--data`` (the checkpoint's validation photos
as the held-out set); the CLI does the same to an existing export, in place, on a seeded sample of a
folder of held-out photos, each framed as the site frames it (``ml.framing.photo_reconstruct``).

What is quantised, and why only that (measured on this project's 2-core AVX2 machine, 500 held-out
photos; the figures are in the README's "Speed under load"): the encoder's head and the decoder's
projection (``Gemm``/``MatMul``) get int8 weights, one scale per output channel, and their inputs are
quantised to uint8 at run time with a scale per call (``onnxruntime.quantization.quantize_dynamic``).
At batch 1 these two layers are bound by memory traffic (8 MB and 4 MB of fp32 weights for 3% of the
FLOPs), so a quarter of the bytes makes them about twice as fast: about 5% less CPU per ``Model.run``,
half the session load time, files 38% smaller. The convolutions stay fp32: on a CPU without AVX-512
VNNI, ONNX Runtime's int8 convolutions (``QLinearConv``) are slower than its fp32 NCHWc ones, and static
int8 of the whole model costs about 0.09 dB of held-out PSNR.

The quantised graphs use standard ONNX operators only (``DynamicQuantizeLinear``, ``MatMulInteger``),
opset and IR version unchanged, so onnxruntime 1.16.3 (the Lambda stack) loads them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ml import runtime

# Issue 12: quantisation only if held-out PSNR drops by less than this (dB).
MAX_PSNR_DROP_DB = 0.05
QUANTIZATION_KEY = "quantization"
REWRITE = "int8_fully_connected_dynamic"
OP_TYPES = ("Gemm", "MatMul")
# onnxruntime 1.16.3 reads IR version <= 9 and ai.onnx opsets <= 19 (see ml/export.py).
MAX_IR_VERSION = 9
MAX_OPSET = 19


def graph_quantize(source: str | os.PathLike, target: str | os.PathLike) -> list[str]:
    """Write ``target``: the ONNX graph ``source`` with int8 fully connected layers; returns their node names.

    Weights int8, symmetric, one scale per output channel; the layer's input uint8 with a scale and zero
    point computed per call (``DynamicQuantizeLinear``); everything else untouched. Opset imports that the
    quantiser declares but the graph does not use are dropped. Raises ``ValueError`` when the result needs
    an operator domain other than ``ai.onnx``, an opset above 19 or an IR version above 9 (what
    onnxruntime 1.16.3 reads), and ``onnx.checker.ValidationError`` for an invalid graph.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source_proto = onnx.load(str(source))
    names = [n.name for n in source_proto.graph.node if n.op_type in OP_TYPES]
    # The quantiser logs a warning on the root logger advising its shape pre-processing, which only
    # matters to the static (calibrated) quantisation of convolutions.
    logging.disable(logging.WARNING)
    try:
        quantize_dynamic(
            str(source),
            str(target),
            op_types_to_quantize=list(OP_TYPES),
            per_channel=True,
            weight_type=QuantType.QInt8,
        )
    finally:
        logging.disable(logging.NOTSET)
    proto = onnx.load(str(target))
    used = {node.domain or "" for node in proto.graph.node}
    kept = [entry for entry in proto.opset_import if (entry.domain or "") in used | {""}]
    del proto.opset_import[:]
    proto.opset_import.extend(kept)
    opsets = {entry.domain or "ai.onnx": entry.version for entry in proto.opset_import}
    if set(opsets) - {"ai.onnx"} or opsets.get("ai.onnx", 0) > MAX_OPSET:
        raise ValueError(f"{source}: the quantised graph needs opsets {opsets}; onnxruntime 1.16.3 reads ai.onnx <= 19")
    proto.ir_version = min(proto.ir_version, source_proto.ir_version, MAX_IR_VERSION)
    onnx.checker.check_model(proto, full_check=True)
    onnx.save_model(proto, str(target), save_as_external_data=False)
    return names


def dequantized_initializers(proto: Any) -> dict[str, np.ndarray]:
    """The float32 weights ``{name: array}`` behind the int8 initializers ``graph_quantize`` wrote, under
    their fp32 names and layout: ``<name>[_Transposed]_quantized`` with its ``_scale`` and ``_zero_point``
    (one per output channel) -> ``(q - zero_point) * scale``, transposed back where the quantiser
    transposed it. What ``ml.bench`` rebuilds the torch model from; the scales and zero points
    themselves are left out. Raises ``ValueError`` for a quantised initializer without its scale."""
    from onnx import numpy_helper

    arrays = {init.name: numpy_helper.to_array(init) for init in proto.graph.initializer}
    weights: dict[str, np.ndarray] = {}
    for name, q in arrays.items():
        if not name.endswith("_quantized"):
            continue
        base = name.removesuffix("_quantized")
        if f"{base}_scale" not in arrays:
            raise ValueError(f"{name}: no {base}_scale beside it")
        scale = arrays[f"{base}_scale"].astype(np.float32)
        zero = arrays.get(f"{base}_zero_point", np.zeros_like(scale)).astype(np.float32)
        weight = (q.astype(np.float32) - zero) * scale  # per output channel: the last axis of [in, out]
        if base.endswith("_Transposed"):
            base, weight = base.removesuffix("_Transposed"), weight.T
        weights[base] = np.ascontiguousarray(weight)
    return weights


def _psnr_ssim_kl_likeness(
    model: runtime.Model, files: Sequence[Path], locate: bool, facings: Mapping[str, str] | None
) -> dict[str, dict[str, Any]]:
    from ml import evaluate

    records = evaluate.score_files(model, files, locate=locate, facings=facings)
    return {r["name"]: r for r in records if "error" not in r}


def _mean(values: list[float]) -> float:
    return float(np.mean(np.asarray(values, dtype=np.float64)))


def _held_out_check(
    fp32_dir: Path,
    int8_dir: Path,
    files: Sequence[Path],
    locate: bool,
    max_psnr_drop_db: float,
    facings: Mapping[str, str] | None,
) -> dict[str, Any]:
    """Both models on the same photos: mean PSNR/SSIM and their drops, KL and car-likeness changes."""
    before = _psnr_ssim_kl_likeness(runtime.Model(fp32_dir, threads=1), files, locate, facings)
    after = _psnr_ssim_kl_likeness(runtime.Model(int8_dir, threads=1), files, locate, facings)
    names = sorted(set(before) & set(after))
    if not names:
        raise ValueError(f"none of the {len(files)} held-out photos could be decoded")
    drop = [before[n]["psnr"] - after[n]["psnr"] for n in names]
    check: dict[str, Any] = {
        "n": len(names),
        "framing": "site (ml.framing.photo_reconstruct)" if locate else "whole photo",
        "psnr_fp32": round(_mean([before[n]["psnr"] for n in names]), 4),
        "psnr_int8": round(_mean([after[n]["psnr"] for n in names]), 4),
        "psnr_drop_db": round(_mean(drop), 4),
        "psnr_drop_worst_db": round(max(drop), 4),
        "max_psnr_drop_db": max_psnr_drop_db,
        "ssim_drop": round(_mean([before[n]["ssim"] - after[n]["ssim"] for n in names]), 5),
        "kl_change_nats": round(_mean([after[n]["kl"] - before[n]["kl"] for n in names]), 3),
        "kl_abs_change_nats": round(_mean([abs(after[n]["kl"] - before[n]["kl"]) for n in names]), 3),
    }
    likeness = [n for n in names if before[n].get("car_likeness") is not None]
    if likeness:
        check["car_likeness_abs_change"] = round(
            _mean([abs(after[n]["car_likeness"] - before[n]["car_likeness"]) for n in likeness]), 4
        )
    if locate:
        check["car_found_changes"] = sum(before[n]["car_found"] != after[n]["car_found"] for n in names)
    return check


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` atomically (a temporary sibling renamed over it)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def _swap_dirs(new: Path, out: Path) -> None:
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    out.rename(old)
    new.rename(out)
    shutil.rmtree(old)


def model_quantize(
    model_dir: str | os.PathLike,
    held_out: Sequence[str | os.PathLike],
    *,
    max_psnr_drop_db: float = MAX_PSNR_DROP_DB,
    locate: bool = False,
    facings: Mapping[str, str] | None = None,
    source: str | None = None,
) -> dict[str, Any]:
    """Quantise the exported model in ``model_dir`` in place (``graph_quantize`` on both ONNX files) if
    its mean PSNR on the ``held_out`` photos drops by less than ``max_psnr_drop_db`` dB; returns the
    record it writes to ``metadata.json`` under ``"quantization"``.

    The record says whether it was ``applied``, what and how (``op_types``, ``nodes`` per file, the
    onnxruntime version), the ``check`` (photos scored, mean PSNR of fp32 and int8 in dB, the drop and
    the worst photo's drop, the SSIM drop, the mean and mean absolute KL change in nats, the mean absolute
    car-likeness change, and with ``locate`` how many car-check answers changed; ``facings``, {file name:
    facing} as ``ml.export`` has it, mirrors right-facing photos as training did), and ``fp32_files`` (the
    SHA-256 and bytes of the files it replaced). When applied, ``files`` carries the new SHA-256 and sizes
    (what the registry checks), each file's ``rewrites`` gains ``"int8_fully_connected_dynamic"`` and the
    version gets the suffix ``-int8``; the metadata's ``metrics`` and ``calibration`` stay those measured
    on fp32. When refused, the ONNX files are untouched and ``reason`` says why. Photos are scored as
    ``ml.evaluate`` scores them: the whole photo, or framed as the site frames it with ``locate``.
    The directory is swapped whole (or the metadata rewritten atomically), so a crash leaves the old model.

    Raises ``FileNotFoundError`` without an export in ``model_dir``, ``ValueError`` when the model is
    already quantised, ``held_out`` is empty or none of it decodes, or the quantised graph is not one
    onnxruntime 1.16.3 reads.
    """
    model_dir = Path(model_dir)
    metadata_path = model_dir / runtime.METADATA_FILE
    if not metadata_path.is_file():
        raise FileNotFoundError(f"no exported model in {model_dir} (missing {runtime.METADATA_FILE})")
    metadata = json.loads(metadata_path.read_text())
    if (metadata.get(QUANTIZATION_KEY) or {}).get("applied"):
        raise ValueError(f"{model_dir} is already quantised ({metadata['version']})")
    files = [Path(f) for f in held_out]
    if not files:
        raise ValueError("the PSNR check needs held-out photos; none given")
    import onnxruntime

    work = Path(tempfile.mkdtemp(prefix=f".{model_dir.name}.int8-", dir=model_dir.parent))
    try:
        work.rmdir()
        shutil.copytree(model_dir, work)
        nodes = {
            name: graph_quantize(model_dir / name, work / name) for name in (runtime.ENCODER_FILE, runtime.DECODER_FILE)
        }
        record: dict[str, Any] = {
            "applied": False,
            "method": "onnxruntime.quantization.quantize_dynamic",
            "weights": "int8, symmetric, one scale per output channel",
            "activations": "uint8, scale and zero point per call (DynamicQuantizeLinear)",
            "op_types": list(OP_TYPES),
            "nodes": nodes,
            "onnxruntime": onnxruntime.__version__,
            "held_out": source or (str(files[0].parent) if len({f.parent for f in files}) == 1 else "files"),
            "check": _held_out_check(model_dir, work, files, locate, max_psnr_drop_db, facings),
            "fp32_files": {
                name: {"sha256": entry["sha256"], "bytes": entry["bytes"]}
                for name, entry in metadata["files"].items()
                if name in nodes
            },
        }
        drop = record["check"]["psnr_drop_db"]
        if not math.isfinite(drop) or drop >= max_psnr_drop_db:
            record["reason"] = f"held-out PSNR dropped by {drop:.4f} dB, not less than {max_psnr_drop_db} dB: fp32 kept"
            shutil.rmtree(work)
            _write_json(metadata_path, {**metadata, QUANTIZATION_KEY: record})
            return record
        record["applied"] = True
        for name in nodes:
            path = work / name
            entry = metadata["files"][name]
            entry["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
            entry["bytes"] = path.stat().st_size
            entry["rewrites"] = [*entry.get("rewrites", []), REWRITE]
        metadata["version"] = f"{metadata['version']}-int8"
        metadata[QUANTIZATION_KEY] = record
        _write_json(work / runtime.METADATA_FILE, metadata)
        _swap_dirs(work, model_dir)
        return record
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def held_out_sample(folder: str | os.PathLike, sample: int, seed: int = 0) -> list[Path]:
    """``sample`` photos of ``folder`` drawn without replacement with ``seed`` (all of them if fewer), sorted."""
    from ml.data import list_images

    files = list_images(folder)
    if sample >= len(files):
        return files
    index = np.random.default_rng(seed).choice(len(files), sample, replace=False)
    return [files[i] for i in sorted(index)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ml.quantize", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help="an exported model directory (quantised in place)")
    parser.add_argument("--data", type=Path, required=True, help="held-out photos, none of them trained on")
    parser.add_argument("--sample", type=int, default=500, help="photos drawn from --data (seeded; default 500)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-drop", type=float, default=MAX_PSNR_DROP_DB, help="largest PSNR drop kept, in dB")
    args = parser.parse_args(argv)
    if not (args.model / runtime.METADATA_FILE).is_file():
        parser.error(f"no exported model in {args.model}")
    if not args.data.is_dir():
        parser.error(f"no such folder: {args.data}")
    if args.sample < 1:
        parser.error("--sample must be at least 1")
    files = held_out_sample(args.data, args.sample, args.seed)
    if not files:
        parser.error(f"no photos in {args.data}")
    try:
        record = model_quantize(
            args.model, files, max_psnr_drop_db=args.max_drop, locate=True, source=f"{args.data} ({len(files)})"
        )
    except ValueError as error:
        print(f"python -m ml.quantize: {error}", file=sys.stderr)
        return 1
    check = record["check"]
    print(
        f"{'quantised' if record['applied'] else 'kept fp32'}: held-out PSNR {check['psnr_fp32']:.3f} -> "
        f"{check['psnr_int8']:.3f} dB (drop {check['psnr_drop_db']:.4f}, limit {check['max_psnr_drop_db']}) "
        f"on {check['n']} photos",
        file=sys.stderr,
    )
    print(json.dumps({"model": str(args.model), **record}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
