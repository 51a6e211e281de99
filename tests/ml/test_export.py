import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from ml import runtime
from ml.export import count_flops, export_checkpoint, main, mean_image
from ml.model import VAE
from ml.onnx_rewrite import conv_as_transpose, phase_kernels, phase_space_kernel, tail_weights_from_phases


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("batch", [1, 5])
def test_it_matches_torch_within_1e_4(tiny_export: Any, batch: int) -> None:
    x = np.random.default_rng(batch).random((batch, 3, 16, 32), dtype=np.float32)
    z = np.random.default_rng(batch + 10).standard_normal((batch, 8)).astype(np.float32)
    mu, logvar = _session(tiny_export.model_dir / "encoder.onnx").run(None, {"x": x})
    image = _session(tiny_export.model_dir / "decoder.onnx").run(None, {"z": z})[0]
    with torch.no_grad():
        mu_t, logvar_t = tiny_export.vae.encode(torch.from_numpy(x))
        image_t = tiny_export.vae.decode(torch.from_numpy(z))
    assert mu.shape == (batch, 8) and image.shape == (batch, 3, 16, 32)
    assert np.abs(mu - mu_t.numpy()).max() <= 1e-4
    assert np.abs(logvar - logvar_t.numpy()).max() <= 1e-4
    assert np.abs(image - image_t.numpy()).max() <= 1e-4


def test_it_writes_self_contained_models_for_onnxruntime_1_16(tiny_export: Any) -> None:
    files = sorted(p.name for p in tiny_export.model_dir.iterdir())
    assert not [f for f in files if f.endswith(".data")]
    for name in ("encoder.onnx", "decoder.onnx"):
        proto = onnx.load(str(tiny_export.model_dir / name), load_external_data=False)
        assert proto.ir_version <= 9
        assert {(o.domain or "ai.onnx") for o in proto.opset_import} == {"ai.onnx"}
        assert max(o.version for o in proto.opset_import) <= 19
        assert not any(init.data_location == onnx.TensorProto.EXTERNAL for init in proto.graph.initializer)
        batch = proto.graph.input[0].type.tensor_type.shape.dim[0]
        assert batch.dim_param and not batch.dim_value


def test_it_folds_batchnorm_running_statistics(tiny_export: Any) -> None:
    # The fixture's training-mode passes moved the statistics; parity above would fail if the
    # export ran BatchNorm on batch statistics, which differ from these.
    bn = tiny_export.vae.encoder.features[1]
    assert not torch.allclose(bn.running_mean, torch.zeros_like(bn.running_mean))
    x = np.full((2, 3, 16, 32), 0.5, np.float32)
    x[1] = 0.9
    mu = _session(tiny_export.model_dir / "encoder.onnx").run(None, {"x": x})[0]
    with torch.no_grad():
        single = tiny_export.vae.encode(torch.from_numpy(x[:1]))[0].numpy()
    assert np.abs(mu[:1] - single).max() <= 1e-4


def test_it_writes_metadata_with_config_preprocessing_metrics_and_calibration(tiny_export: Any) -> None:
    metadata = json.loads((tiny_export.model_dir / "metadata.json").read_text())
    assert metadata["format_version"] == runtime.FORMAT_VERSION
    assert metadata["version"].startswith("model-") and len(metadata["version"]) == len("model-") + 12
    assert metadata["model"] == tiny_export.config.model.to_dict()
    assert metadata["training"]["config"] == tiny_export.config.to_dict()
    assert metadata["preprocessing"]["method"] == "letterbox" and metadata["preprocessing"]["pad_value"] == 0.5
    assert metadata["data"]["val_names"] == tiny_export.val_names
    assert metadata["parameters"] == sum(p.numel() for p in tiny_export.vae.parameters())
    assert metadata["metrics"]["n"] == 3 and metadata["metrics"]["split"] == "validation"
    assert set(metadata["calibration"]["features"]) == {"log_mse", "kl", "logvar", "excess_error_db"}
    assert metadata["calibration"]["n"] == 3
    assert metadata["mean_image"] == "mean_image.png"
    with Image.open(tiny_export.model_dir / "mean_image.png") as image:
        assert image.size == (32, 16)
    assert (tiny_export.model_dir / "loss_curve.png").is_file()
    assert not (tiny_export.model_dir / "val_reconstructions.png").exists()


def test_it_counts_flops_by_hand(tiny_export: Any) -> None:
    model = VAE(tiny_export.config.model)
    # Encoder: conv 3->8 k4 to 8x16, conv 8->16 k4 to 4x8, linear 16*4*8 -> 16.
    encoder = 8 * 16 * 8 * 3 * 16 + 4 * 8 * 16 * 8 * 16 + 512 * 16
    # Decoder: linear 8 -> 512, res block (two 3x3 16->16 at 4x8), convT 16->8 from 4x8,
    # convT 8->8 from 8x16, conv 8->3 3x3 at 16x32.
    decoder = 8 * 512 + 2 * (4 * 8 * 16 * 16 * 9) + 4 * 8 * 16 * 8 * 16 + 8 * 16 * 8 * 8 * 16 + 16 * 32 * 3 * 8 * 9
    assert count_flops(model) == pytest.approx(2 * (encoder + decoder) / 1e9)


def test_it_averages_the_mean_image_over_the_photos_only() -> None:
    images = np.zeros((2, 3, 2, 4), np.uint8)
    images[0, :, :, :2] = 255  # photo in the left half, bars (0) elsewhere
    images[1, :, :, :] = 51
    boxes = np.array([[0, 0, 2, 2], [0, 0, 4, 2]])
    mean = mean_image(images, boxes, pad_value=0.5)
    assert np.allclose(mean[:, :, :2], (1.0 + 0.2) / 2)
    assert np.allclose(mean[:, :, 2:], 0.2)


def test_it_replaces_a_model_directory_and_keeps_the_model_card(tiny_export: Any, tmp_path: Path) -> None:
    out = tmp_path / "weights" / "candidate"
    shutil.copytree(tiny_export.model_dir, out)
    (out / "MODEL_CARD.md").write_text("# card\n")
    (out / "encoder.onnx").write_bytes(b"stale")
    assert main([str(tiny_export.checkpoint), "--out", str(out), "--name", "cand"]) == 0
    assert (out / "MODEL_CARD.md").read_text() == "# card\n"
    model = runtime.Model(out)
    assert model.version.startswith("cand-")
    assert model.metadata["metrics"] is None and model.calibration is None
    assert sorted(p.name for p in out.parent.iterdir()) == ["candidate"]


def test_it_leaves_the_old_model_untouched_when_export_fails(tiny_export: Any, tmp_path: Path) -> None:
    out = tmp_path / "model"
    shutil.copytree(tiny_export.model_dir, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    empty = tmp_path / "no-photos"
    empty.mkdir()
    with pytest.raises(ValueError, match="validation images"):
        export_checkpoint(tiny_export.checkpoint, out, data_dir=empty)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "no-photos"]


def test_it_rewrites_the_decoder_tail_into_exact_phase_convolutions() -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 6, 9, generator=generator)
    w_up = torch.randn(5, 7, 4, 4, generator=generator)
    b_up = torch.randn(7, generator=generator)
    w_out = torch.randn(3, 7, 3, 3, generator=generator)
    b_out = torch.randn(3, generator=generator)
    act = torch.nn.functional.leaky_relu
    conv = torch.nn.functional.conv2d
    expected = conv(
        act(torch.nn.functional.conv_transpose2d(x, w_up, b_up, stride=2, padding=1), 0.2), w_out, b_out, padding=1
    )

    phases = [
        conv(torch.nn.functional.pad(x, (1 - c, c, 1 - a, a)), torch.from_numpy(k), b_up)
        for (a, c), k in phase_kernels(w_up.numpy()).items()
    ]
    kernel = torch.from_numpy(conv_as_transpose(phase_space_kernel(w_out.numpy())))
    phased = torch.nn.functional.conv_transpose2d(act(torch.cat(phases, 1), 0.2), kernel, b_out.repeat(4), padding=1)
    # DepthToSpace, DCR: channel (a * 2 + c) * K + k -> pixel (2h + a, 2w + c) of channel k.
    b, _, h, w = phased.shape
    got = phased.reshape(b, 2, 2, 3, h, w).permute(0, 3, 4, 1, 5, 2).reshape(b, 3, 2 * h, 2 * w)
    assert (got - expected).abs().max().item() < 1e-4

    names = {"up": w_up.numpy(), "out": w_out.numpy(), "out_bias": b_out.numpy()}
    rewritten = {f"up.phase{a}{c}": k for (a, c), k in phase_kernels(names["up"]).items()}
    rewritten["out.phase_space"] = conv_as_transpose(phase_space_kernel(names["out"]))
    rewritten["out_bias.phase_space"] = np.tile(names["out_bias"], 4)
    back = tail_weights_from_phases(rewritten)
    assert set(back) == set(names)
    assert all(np.array_equal(back[key], value) for key, value in names.items())


def test_it_applies_the_decoder_tail_rewrite_to_the_exported_model(tiny_export: Any) -> None:
    proto = onnx.load(str(tiny_export.model_dir / "decoder.onnx"))
    ops = [node.op_type for node in proto.graph.node]
    assert ops[-2:] == ["DepthToSpace", "Sigmoid"]
    assert ops.count("Conv") >= 4 and "Concat" in ops
    metadata = json.loads((tiny_export.model_dir / "metadata.json").read_text())
    assert metadata["files"]["decoder.onnx"]["rewrites"] == ["decoder_tail_phase_space"]
