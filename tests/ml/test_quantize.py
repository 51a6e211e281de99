import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from ml import quantize, runtime
from ml.export import export_checkpoint


def _copy(tiny_export: Any, tmp_path: Path) -> Path:
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_export.model_dir, model_dir)
    return model_dir


def _val_files(tiny_export: Any) -> list[Path]:
    return [tiny_export.data_dir / name for name in tiny_export.val_names]


def _op_types(path: Path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node}


def test_it_quantises_the_fully_connected_layers_into_a_loadable_model(tiny_export: Any, tmp_path: Path) -> None:
    model_dir = _copy(tiny_export, tmp_path)
    fp32 = runtime.Model(tiny_export.model_dir)
    # A tiny untrained model: its PSNR is far from a real model's, so only the mechanics are tested here;
    # the 0.05 dB limit is measured on real photos (README, "Speed under load").
    record = quantize.model_quantize(model_dir, _val_files(tiny_export), max_psnr_drop_db=1.0)

    assert record["applied"] is True
    metadata = json.loads((model_dir / "metadata.json").read_text())
    assert metadata["quantization"] == record
    assert metadata["version"] == f"{fp32.version}-int8"
    check = record["check"]
    assert check["n"] == 3 and abs(check["psnr_fp32"] - check["psnr_int8"] - check["psnr_drop_db"]) < 1e-3
    assert check["psnr_drop_db"] < 1.0 and {"ssim_drop", "kl_change_nats", "car_likeness_abs_change"} <= set(check)
    for name in ("encoder.onnx", "decoder.onnx"):
        entry = metadata["files"][name]
        data = (model_dir / name).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest() and entry["bytes"] == len(data)
        assert entry["rewrites"][-1] == quantize.REWRITE
        assert record["fp32_files"][name]["sha256"] == fp32.metadata["files"][name]["sha256"]
        assert {"MatMulInteger", "DynamicQuantizeLinear"} <= _op_types(model_dir / name)
        assert "Gemm" not in _op_types(model_dir / name) and "Conv" in _op_types(model_dir / name)
        proto = onnx.load(str(model_dir / name))
        assert proto.ir_version <= 9 and {(o.domain or "ai.onnx") for o in proto.opset_import} == {"ai.onnx"}
    assert record["nodes"]["encoder.onnx"] and record["nodes"]["decoder.onnx"]

    int8 = runtime.Model(model_dir)
    x = np.random.default_rng(0).random((2, 3, 16, 32), dtype=np.float32)
    a, b = fp32.run(x), int8.run(x)
    assert b.recon.shape == a.recon.shape and np.isfinite(b.recon).all()
    assert np.abs(b.mu - a.mu).max() < 0.1 * max(1.0, float(np.abs(a.mu).max()))
    assert 0 < np.abs(b.recon - a.recon).max() < 0.1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary directory left
    with pytest.raises(ValueError, match="already quantised"):
        quantize.model_quantize(model_dir, _val_files(tiny_export))


def test_it_keeps_fp32_and_says_why_when_the_psnr_drop_is_not_below_the_limit(tiny_export: Any, tmp_path: Path) -> None:
    model_dir = _copy(tiny_export, tmp_path)
    onnx_before = {n: (model_dir / n).read_bytes() for n in ("encoder.onnx", "decoder.onnx")}
    metadata_before = json.loads((model_dir / "metadata.json").read_text())
    # A limit no quantisation meets: PSNR would have to rise by 50 dB.
    record = quantize.model_quantize(model_dir, _val_files(tiny_export), max_psnr_drop_db=-50.0)

    assert record["applied"] is False
    assert "not less than -50.0 dB: fp32 kept" in record["reason"]
    assert {n: (model_dir / n).read_bytes() for n in onnx_before} == onnx_before
    metadata = json.loads((model_dir / "metadata.json").read_text())
    assert metadata == {**metadata_before, "quantization": record}
    assert runtime.Model(model_dir).version == metadata_before["version"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_it_refuses_without_held_out_photos(tiny_export: Any, tmp_path: Path) -> None:
    model_dir = _copy(tiny_export, tmp_path)
    with pytest.raises(ValueError, match="held-out photos"):
        quantize.model_quantize(model_dir, [])
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a picture")
    with pytest.raises(ValueError, match="could be decoded"):
        quantize.model_quantize(model_dir, [bad])
    assert "quantization" not in json.loads((model_dir / "metadata.json").read_text())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.png", "model"]


def test_the_cli_quantises_an_export_in_place(tiny_export: Any, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model_dir = _copy(tiny_export, tmp_path)
    args = [str(model_dir), "--data", str(tiny_export.data_dir), "--sample", "3", "--max-drop", "5"]
    assert quantize.main(args) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["applied"] is True and printed["check"]["n"] == 3
    assert printed["check"]["framing"].startswith("site")
    assert runtime.Model(model_dir).metadata["quantization"]["applied"] is True
    assert quantize.main(args) == 1  # already quantised: a clear error, nothing changed
    assert "already quantised" in capsys.readouterr().err


def test_export_quantises_and_records_the_check(tiny_export: Any, tmp_path: Path) -> None:
    out = export_checkpoint(tiny_export.checkpoint, tmp_path / "model", data_dir=tiny_export.data_dir)
    record = runtime.Model(out).metadata["quantization"]
    assert record["check"]["n"] == len(tiny_export.val_names)
    assert record["held_out"].endswith("(validation split)")
    # Applied or refused, the record says which, and refusal keeps the fp32 files.
    ops = _op_types(out / "encoder.onnx")
    assert ("MatMulInteger" in ops) == record["applied"] and ("reason" in record) != record["applied"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
