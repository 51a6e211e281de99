import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ml import bench, quantize, runtime

KEYS = {
    "ort_p50_ms",
    "ort_p95_ms",
    "torch_p50_ms",
    "torch_over_ort",
    "gflop",
    "flop_bound_ms",
    "ort_over_bound",
    "batch_imgs_per_s",
    "cold_start_s",
    "peak_rss_mb",
    "ort_int8_p50_ms",
    "int8_over_fp32",
}


def test_it_prints_the_benchmark_as_one_json_line(tiny_export: Any, capsys: pytest.CaptureFixture) -> None:
    assert bench.main(["--model", str(tiny_export.model_dir), "--quick"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(result) >= KEYS
    assert all(result[key] > 0 for key in KEYS)
    assert result["gflop"] == runtime.load_model(tiny_export.model_dir).metadata["gflop"]
    assert result["flop_bound_ms"] == pytest.approx(result["gflop"] / result["matmul_gflops"] * 1000, rel=0.01)
    assert result["torch_vs_ort_max_abs_diff"] <= 1e-4
    assert result["quantized"] is False


def test_it_rebuilds_the_torch_model_from_the_onnx_weights(tiny_export: Any) -> None:
    rebuilt = bench.torch_from_onnx(runtime.load_model(tiny_export.model_dir))
    x = torch.from_numpy(np.random.default_rng(0).random((3, 3, 16, 32), dtype=np.float32))
    with torch.no_grad():
        expected = tiny_export.vae.reconstruct(x)
        got = rebuilt.reconstruct(x)
    assert (got - expected).abs().max().item() <= 1e-4


def test_it_rebuilds_the_torch_model_from_a_quantised_model(tiny_export: Any, tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_export.model_dir, model_dir)
    held_out = [tiny_export.data_dir / name for name in tiny_export.val_names]
    assert quantize.model_quantize(model_dir, held_out, max_psnr_drop_db=5.0)["applied"]
    model = runtime.Model(model_dir)
    rebuilt = bench.torch_from_onnx(model)
    x = np.random.default_rng(0).random((3, 3, 16, 32), dtype=np.float32)
    with torch.no_grad():
        expected = tiny_export.vae.reconstruct(torch.from_numpy(x))
        got = rebuilt.reconstruct(torch.from_numpy(x))
    # The dequantised weights differ from the trained ones by their int8 rounding only.
    assert 0 < (got - expected).abs().max().item() <= 0.05
    assert bench._check_same(model, rebuilt, x) <= bench.QUANTIZED_TOLERANCE
