import json
from typing import Any

import numpy as np
import pytest
import torch

from ml import bench, runtime

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
}


def test_it_prints_the_benchmark_as_one_json_line(tiny_export: Any, capsys: pytest.CaptureFixture) -> None:
    assert bench.main(["--model", str(tiny_export.model_dir), "--quick"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(result) >= KEYS
    assert all(result[key] > 0 for key in KEYS)
    assert result["gflop"] == runtime.load_model(tiny_export.model_dir).metadata["gflop"]
    assert result["flop_bound_ms"] == pytest.approx(result["gflop"] / result["matmul_gflops"] * 1000, rel=0.01)
    assert result["torch_vs_ort_max_abs_diff"] <= 1e-4


def test_it_rebuilds_the_torch_model_from_the_onnx_weights(tiny_export: Any) -> None:
    rebuilt = bench.torch_from_onnx(runtime.load_model(tiny_export.model_dir))
    x = torch.from_numpy(np.random.default_rng(0).random((3, 3, 16, 32), dtype=np.float32))
    with torch.no_grad():
        expected = tiny_export.vae.reconstruct(x)
        got = rebuilt.reconstruct(x)
    assert (got - expected).abs().max().item() <= 1e-4
