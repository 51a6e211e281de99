"""A tiny VAE built in-process and exported once per test session (no ../shared, no training)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ml.config import ModelConfig, TrainConfig
from ml.export import export_checkpoint
from ml.model import VAE, count_parameters
from tests.support import draw_car

TINY = TrainConfig(model=ModelConfig(height=16, width=32, latent_dim=8, widths=(8, 16)), batch_size=4, epochs=2)


@dataclass(frozen=True)
class TinyExport:
    config: TrainConfig
    model_dir: Path
    vae: VAE
    checkpoint: Path
    data_dir: Path
    val_names: list[str]
    noncar_dir: Path


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory: pytest.TempPathFactory) -> TinyExport:
    root = tmp_path_factory.mktemp("tiny")
    data_dir = root / "cars"
    data_dir.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        colour = tuple(int(c) for c in rng.integers(0, 255, 3))
        draw_car((int(rng.integers(60, 120)), 30), colour).save(data_dir / f"car_{i}.png")
    noncar_dir = root / "noncars"
    noncar_dir.mkdir()
    for i in range(4):  # tall noise: nothing like the cars
        pixels = np.random.default_rng(i).integers(0, 256, (60, 30, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(noncar_dir / f"thing_{i}.png")

    torch.manual_seed(0)
    vae = VAE(TINY.model)
    # A few training-mode passes move the BatchNorm running statistics away from (0, 1), so the
    # export has non-trivial statistics to fold.
    vae.train()
    with torch.no_grad():
        for _ in range(3):
            vae(torch.rand(8, 3, 16, 32) * 0.6 + 0.2)
    vae.eval()
    val_names = ["car_1.png", "car_4.png", "car_6.png"]
    run_dir = root / "run"
    run_dir.mkdir()
    checkpoint = run_dir / "best.pt"
    torch.save(
        {
            "config": TINY.to_dict(),
            "model": vae.state_dict(),
            "data": {"images": 8, "skipped": 0, "train": 5, "val": 3, "source": str(data_dir)},
            "val_names": val_names,
            "parameters": count_parameters(vae),
            "state": {"epoch": 2, "best_epoch": 2, "seconds": 1.5},
        },
        checkpoint,
    )
    Image.new("RGB", (40, 20), "white").save(run_dir / "loss_curve.png")
    model_dir = export_checkpoint(checkpoint, root / "model", data_dir=data_dir, int8=False)
    return TinyExport(TINY, model_dir, vae, checkpoint, data_dir, val_names, noncar_dir)
