"""Latency and throughput of an exported model: ONNX Runtime vs torch eager on the same weights.

    python -m ml.bench [--model ml/weights/default] [--checkpoint best.pt] [--quick]

Prints a human summary and, as its last line, one JSON object:

- ``ort_p50_ms`` / ``ort_p95_ms``: one image through encoder + decoder (``Model.run``), 1 thread.
- ``torch_p50_ms``: the same in torch eager, 1 thread, same weights: the faster of NCHW and
  channels_last (both reported). The VAE is rebuilt from the ONNX initializers by name (export
  folds each BatchNorm into the convolution before it; the rebuilt BatchNorm then only adds that
  bias), or loaded from ``--checkpoint``; either way it is checked against ONNX Runtime first.
- ``torch_over_ort``: ``torch_p50_ms / ort_p50_ms``; ORT and torch are timed in alternating
  rounds so that a noisy neighbour slows both alike.
- ``gflop``: FLOPs per image (2 x multiply-adds of the convolutions and linear layers, from the
  metadata); ``matmul_gflops``: this CPU's fp32 peak on one core, the best of the 1024^3
  ``torch.mm`` runs sampled between the timing rounds; ``flop_bound_ms = gflop / matmul_gflops``,
  and ``ort_over_bound = ort_p50_ms / flop_bound_ms``. On a busy machine a median suffers more
  than a best-of, so two more ratios: ``ort_min_over_bound`` (ORT's best time, a best case like the
  peak) and ``ort_over_bound_medians`` (ORT's median against the median matmul sample).
- ``batch_imgs_per_s``: batches of 32 through one session with 2 intra-op threads;
  ``parallel_imgs_per_s``: two Python threads each feeding single images to its own 1-thread
  session (the one-process-per-core setup, inside one process).
- ``ort_int8_p50_ms``: ``Model.run`` of a copy with int8 fully connected layers (``ml.quantize.graph_quantize``,
  timed in the same alternating rounds), ``int8_over_fp32`` its ratio to ``ort_p50_ms``; both None when the
  model is already quantised (``quantized``: then ``ort_p50_ms`` is the int8 figure and torch runs on the
  dequantised weights, checked against ONNX Runtime within the activations' rounding).
- ``end_to_end_p50_ms``: ``Model.reconstruct`` of a 1024x512 JPEG: decode, letterbox, the model,
  scores and the output pictures.
- ``cold_start_s``: a fresh ``python`` process's time from spawn to its first reconstruction
  (imports, session creation, a JPEG) (median of 3), ``peak_rss_mb``: that process's peak RSS.

Timings are wall-clock medians on a shared machine: compare ratios from one run, not absolute
numbers across runs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from ml import quantize, runtime

# ml.quantize's initializers beside each dequantized weight (and the transposed int8 weight itself).
QUANTIZED_SUFFIXES = (
    "_scale",
    "_zero_point",
    "_quantized",
    "_Transposed_scale",
    "_Transposed_zero_point",
    "_Transposed_quantized",
)
# Pixels in [0, 1]: a quantised model's inputs to its int8 layers are rounded to 1/255 of their range per
# call; the default model's reconstructions move by at most 0.09 for it over 500 held-out photos.
QUANTIZED_TOLERANCE = 0.2


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


class MatmulPeak:
    """fp32 matmul throughput of one core: the best ``size``^3 ``torch.mm`` seen over all calls.

    Sampled between the latency rounds, so that it sees the same (shared, noisy) machine they do.
    """

    def __init__(self, size: int = 1024) -> None:
        import torch

        torch.set_num_threads(1)
        generator = torch.Generator().manual_seed(0)
        self.size = size
        self.a = torch.randn(size, size, generator=generator)
        self.b = torch.randn(size, size, generator=generator)
        self.out = torch.empty(size, size)
        self.times: list[float] = []
        torch.mm(self.a, self.b, out=self.out)  # warm-up

    def sample(self, repeats: int = 1) -> None:
        import torch

        for _ in range(repeats):
            started = time.perf_counter()
            torch.mm(self.a, self.b, out=self.out)
            self.times.append(time.perf_counter() - started)

    @property
    def gflops(self) -> float:
        """The peak: the fastest product seen."""
        return 2 * self.size**3 / min(self.times) / 1e9

    @property
    def median_gflops(self) -> float:
        """A typical product on this (shared) machine right now."""
        return 2 * self.size**3 / statistics.median(self.times) / 1e9


def torch_from_onnx(model: runtime.Model):
    """Rebuild the torch VAE from the ONNX initializers (names are the torch parameter names).

    The exporter folds ``conv -> BatchNorm`` into the convolution's weight plus a ``<conv>.weight_bias``
    initializer; that bias goes into the following BatchNorm, made an identity otherwise, which
    leaves the eager model computing exactly what the ONNX graph does. The decoder tail's
    phase-space rewrite (``ml.onnx_rewrite.rewrite_decoder_tail``) is undone first.
    """
    import onnx
    import torch
    from onnx import numpy_helper

    from ml.model import VAE
    from ml.onnx_rewrite import tail_weights_from_phases

    vae = VAE(model.config).eval()
    state = vae.state_dict()
    tensors: dict[str, np.ndarray] = {}
    for file in (runtime.ENCODER_FILE, runtime.DECODER_FILE):
        proto = onnx.load(str(model.model_dir / file))
        dequantized = quantize.dequantized_initializers(proto)  # int8 layers (ml.quantize) as fp32
        quantized = {f"{name}{suffix}" for name in dequantized for suffix in QUANTIZED_SUFFIXES}
        arrays = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer if i.name not in quantized}
        for name, value in {**arrays, **dequantized}.items():
            if name.startswith("model."):
                tensors[name.removeprefix("model.")] = value
    tensors = tail_weights_from_phases(tensors)
    assigned: set[str] = set()
    for name, value in tensors.items():
        if name.endswith(".weight_bias"):
            # "<prefix>.<i>.weight_bias" -> the BatchNorm "<prefix>.<i+1>" after conv i.
            match = re.fullmatch(r"(.*)\.(\d+)\.weight_bias", name)
            if match is None:
                raise ValueError(f"unexpected folded bias {name!r}")
            bn = f"{match.group(1)}.{int(match.group(2)) + 1}"
            module = vae.get_submodule(bn)
            if not isinstance(module, torch.nn.BatchNorm2d):
                raise ValueError(f"{name!r}: {bn} is not a BatchNorm")
            state[f"{bn}.weight"] = torch.ones_like(state[f"{bn}.weight"])
            state[f"{bn}.bias"] = torch.from_numpy(value.copy())
            state[f"{bn}.running_mean"] = torch.zeros_like(state[f"{bn}.running_mean"])
            state[f"{bn}.running_var"] = torch.full_like(state[f"{bn}.running_var"], 1.0 - module.eps)
            assigned.update(f"{bn}.{p}" for p in ("weight", "bias", "running_mean", "running_var"))
        elif name in state:
            state[name] = torch.from_numpy(value.copy()).reshape(state[name].shape)
            assigned.add(name)
        else:
            raise ValueError(f"ONNX initializer {name!r} has no place in the torch model")
    missing = [k for k in state if k not in assigned and not k.endswith("num_batches_tracked")]
    if missing:
        raise ValueError(f"the ONNX files do not provide {missing[:5]}...; pass --checkpoint")
    vae.load_state_dict(state)
    return vae


def _is_quantized(model: runtime.Model) -> bool:
    return bool((model.metadata.get(quantize.QUANTIZATION_KEY) or {}).get("applied"))


def _check_same(model: runtime.Model, vae: Any, x: np.ndarray) -> float:
    """Largest difference of the reconstructions; raises unless within 1e-3 (fp32) or, for a quantised
    model (whose torch twin has the dequantised weights), within ``QUANTIZED_TOLERANCE``."""
    import torch

    with torch.inference_mode():
        mu, _ = vae.encode(torch.from_numpy(x))
        expected = vae.decode(mu).numpy()
    diff = float(np.abs(model.run(x).recon - expected).max())
    if diff > (QUANTIZED_TOLERANCE if _is_quantized(model) else 1e-3):
        raise RuntimeError(f"torch and ONNX Runtime disagree by {diff:.2g}: not the same weights")
    return diff


def _sample_jpeg(path: Path, size: tuple[int, int] = (1024, 512)) -> Path:
    """A car-ish picture (a body and two wheels on a light background), no data needed."""
    image = Image.new("RGB", size, (225, 228, 232))
    draw = ImageDraw.Draw(image)
    w, h = size
    draw.rounded_rectangle((w * 0.1, h * 0.35, w * 0.9, h * 0.75), radius=h // 10, fill=(170, 30, 40))
    draw.polygon(
        [(w * 0.3, h * 0.35), (w * 0.4, h * 0.15), (w * 0.65, h * 0.15), (w * 0.75, h * 0.35)], fill=(150, 25, 35)
    )
    for cx in (w * 0.27, w * 0.73):
        draw.ellipse((cx - h * 0.12, h * 0.62, cx + h * 0.12, h * 0.86), fill=(25, 25, 25))
    image.save(path, quality=90)
    return path


# VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss across exec, so a child spawned by this
# (torch-sized) process would report the parent's peak.
COLD_START = """
import sys, time
from ml import runtime
model = runtime.load_model(sys.argv[1])
model.reconstruct(sys.argv[2])
done = time.time()
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(done, int(hwm.split()[1]) / 1024)
"""


def cold_start(model_dir: Path, image: Path) -> tuple[float, float]:
    """Seconds from spawning a fresh interpreter to its first reconstruction, and its peak RSS (MB)."""
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root), runtime.THREADS_ENV: "1"}
    started = time.time()
    out = subprocess.run(
        [sys.executable, "-c", COLD_START, str(model_dir), str(image)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        cwd=root,
    )
    done, rss = out.stdout.split()
    return float(done) - started, float(rss)


def _time(fn: Any, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return times


def bench(
    model_dir: Path = runtime.DEFAULT_MODEL_DIR,
    checkpoint: Path | None = None,
    rounds: int = 10,
    per_round: int = 20,
    cold_runs: int = 3,
) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    model = runtime.Model(model_dir, threads=1)
    config = model.config
    gflop = float(model.metadata["gflop"])
    if checkpoint is not None:
        from ml.train import load_checkpoint

        vae, _ = load_checkpoint(checkpoint)
    else:
        vae = torch_from_onnx(model)
    vae_cl = vae.to(memory_format=torch.channels_last)
    x = np.random.default_rng(0).random((1, config.channels, config.height, config.width), dtype=np.float32)
    parity = _check_same(model, vae, x)
    xt = torch.from_numpy(x)
    xt_cl = xt.contiguous(memory_format=torch.channels_last)

    def torch_run(module: Any, tensor: Any) -> None:
        with torch.inference_mode():
            module.decode(module.encode(tensor)[0])

    int8_dir = None if _is_quantized(model) else tempfile.TemporaryDirectory()
    int8 = None
    if int8_dir is not None:
        shutil.copytree(model_dir, Path(int8_dir.name) / "model")
        for file in (runtime.ENCODER_FILE, runtime.DECODER_FILE):
            quantize.graph_quantize(Path(model_dir) / file, Path(int8_dir.name) / "model" / file)
        int8 = runtime.Model(Path(int8_dir.name) / "model", threads=1)

    # Warm up every path, then time them in alternating rounds.
    for fn in (lambda: model.run(x), lambda: torch_run(vae, xt), lambda: torch_run(vae_cl, xt_cl)):
        _time(fn, max(3, per_round // 2))
    if int8 is not None:
        _time(lambda: int8.run(x), max(3, per_round // 2))
    matmul = MatmulPeak()
    matmul.sample(3)
    ort_ms: list[float] = []
    torch_ms: list[float] = []
    torch_cl_ms: list[float] = []
    int8_ms: list[float] = []
    for _ in range(rounds):
        ort_ms += _time(lambda: model.run(x), per_round)
        if int8 is not None:
            int8_ms += _time(lambda: int8.run(x), per_round)
        torch_ms += _time(lambda: torch_run(vae, xt), per_round)
        torch_cl_ms += _time(lambda: torch_run(vae_cl, xt_cl), per_round)
        matmul.sample(2)
    peak = matmul.gflops
    if int8_dir is not None:
        int8_dir.cleanup()
    int8_p50 = statistics.median(int8_ms) if int8_ms else None

    ort_p50 = statistics.median(ort_ms)
    torch_nchw_p50 = statistics.median(torch_ms)
    torch_cl_p50 = statistics.median(torch_cl_ms)
    torch_p50 = min(torch_nchw_p50, torch_cl_p50)
    flop_bound_ms = gflop / peak * 1000

    # Throughput with both cores.
    batch = np.repeat(x, 32, axis=0)
    two = runtime.Model(model_dir, threads=2)
    two.run(batch)
    batch_repeats = max(2, rounds // 2)
    started = time.perf_counter()
    for _ in range(batch_repeats):
        two.run(batch)
    batch_imgs_per_s = 32 * batch_repeats / (time.perf_counter() - started)

    other = runtime.Model(model_dir, threads=1)
    per_thread = rounds * per_round // 2

    def feed(m: runtime.Model) -> None:
        for _ in range(per_thread):
            m.run(x)

    threads = [threading.Thread(target=feed, args=(m,)) for m in (model, other)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    parallel_imgs_per_s = 2 * per_thread / (time.perf_counter() - started)

    with tempfile.TemporaryDirectory() as tmp:
        jpeg = _sample_jpeg(Path(tmp) / "car.jpg")
        model.reconstruct(jpeg)
        end_to_end = statistics.median(_time(lambda: model.reconstruct(jpeg), per_round))
        colds = [cold_start(Path(model_dir), jpeg) for _ in range(cold_runs)]

    return {
        "model": model.version,
        "ort_version": runtime.ort.__version__,
        "torch_version": torch.__version__.split("+")[0],
        "ort_p50_ms": round(ort_p50, 3),
        "ort_p95_ms": round(_percentile(ort_ms, 95), 3),
        "torch_p50_ms": round(torch_p50, 3),
        "torch_nchw_p50_ms": round(torch_nchw_p50, 3),
        "torch_channels_last_p50_ms": round(torch_cl_p50, 3),
        "torch_over_ort": round(torch_p50 / ort_p50, 3),
        "quantized": _is_quantized(model),
        "ort_int8_p50_ms": None if int8_p50 is None else round(int8_p50, 3),
        "int8_over_fp32": None if int8_p50 is None else round(int8_p50 / ort_p50, 3),
        "gflop": gflop,
        "matmul_gflops": round(peak, 1),
        "flop_bound_ms": round(flop_bound_ms, 5),
        "ort_over_bound": round(ort_p50 / flop_bound_ms, 3),
        # Best-case readings (the quietest moments of a shared machine), like the matmul peak.
        "ort_min_ms": round(min(ort_ms), 3),
        "torch_min_ms": round(min(min(torch_ms), min(torch_cl_ms)), 3),
        "ort_min_over_bound": round(min(ort_ms) / flop_bound_ms, 3),
        # Typical against typical: a neighbour slows the matmul samples and ORT alike.
        "matmul_median_gflops": round(matmul.median_gflops, 1),
        "ort_over_bound_medians": round(ort_p50 / (gflop / matmul.median_gflops * 1000), 3),
        "batch_imgs_per_s": round(batch_imgs_per_s, 1),
        "parallel_imgs_per_s": round(parallel_imgs_per_s, 1),
        "end_to_end_p50_ms": round(end_to_end, 3),
        "cold_start_s": round(statistics.median(c[0] for c in colds), 3),
        "peak_rss_mb": round(max(c[1] for c in colds), 1),
        "torch_vs_ort_max_abs_diff": parity,
        "samples": len(ort_ms),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ml.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=runtime.DEFAULT_MODEL_DIR, help="exported model directory")
    parser.add_argument("--checkpoint", type=Path, help="torch checkpoint of the same model (default: rebuild)")
    parser.add_argument("--rounds", type=int, default=10, help="alternating timing rounds")
    parser.add_argument("--quick", action="store_true", help="few samples: checks that it runs, not how fast")
    args = parser.parse_args(argv)
    if args.quick:
        result = bench(args.model, args.checkpoint, rounds=2, per_round=3, cold_runs=1)
    else:
        result = bench(args.model, args.checkpoint, rounds=args.rounds)
    print(
        f"{result['model']}: ORT {result['ort_p50_ms']:.2f} ms (p95 {result['ort_p95_ms']:.2f}), "
        f"torch {result['torch_p50_ms']:.2f} ms -> torch/ORT {result['torch_over_ort']:.2f}x\n"
        + (
            f"  int8 fully connected layers (ml.quantize): {result['ort_int8_p50_ms']:.2f} ms, "
            f"{result['int8_over_fp32']:.2f}x fp32\n"
            if result["ort_int8_p50_ms"] is not None
            else "  (the model is quantised: ORT figures are int8)\n"
        )
        + f"  {result['gflop']} GFLOP at {result['matmul_gflops']} GFLOP/s -> bound {result['flop_bound_ms']:.2f} ms, "
        f"ORT at {result['ort_over_bound']:.2f}x the bound\n"
        f"  throughput {result['batch_imgs_per_s']:.0f} img/s (batch 32, 2 threads), "
        f"{result['parallel_imgs_per_s']:.0f} img/s (2 x 1 thread); end to end {result['end_to_end_p50_ms']:.1f} ms\n"
        f"  cold start {result['cold_start_s']:.3f} s, peak RSS {result['peak_rss_mb']:.0f} MB"
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
