"""Fixtures for curation tests: a temporary media root, staff and users, drawn car photos, and a
tiny exported model (built in-process once per session) registered as the active version."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from reconstruct.models import ModelVersion
from reconstruct.registry.services import model_version_activate, model_version_register
from tests.support import draw_car, encode, make_user, resave

DrawFn = Callable[..., bytes]


@pytest.fixture
def media(settings, media_root: Path, tmp_path: Path) -> Path:
    """The media_root fixture's temporary MEDIA_ROOT, plus a temporary folder for training runs."""
    settings.CURATION_TRAINING_DIR = tmp_path / "training"
    return media_root


@pytest.fixture
def staff(db):
    return make_user("sam", staff=True)


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two tiny exported models (different weights), calibrated on drawn cars. Needs torch."""
    import torch

    from ml.config import ModelConfig, TrainConfig
    from ml.export import export_checkpoint
    from ml.model import VAE, count_parameters

    config = TrainConfig(model=ModelConfig(height=16, width=32, latent_dim=8, widths=(8, 16)), batch_size=4, epochs=1)
    root = tmp_path_factory.mktemp("curation-models")
    data_dir = root / "cars"
    data_dir.mkdir()
    for i in range(6):
        (data_dir / f"car_{i}.jpg").write_bytes(encode(draw_car((64, 28), seed=100 + i), "JPEG", quality=92))
    dirs = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        vae = VAE(config.model).eval()
        checkpoint = root / f"run{seed}" / "best.pt"
        checkpoint.parent.mkdir()
        torch.save(
            {
                "config": config.to_dict(),
                "model": vae.state_dict(),
                "data": {"images": 6, "skipped": 0, "train": 4, "val": 2, "source": str(data_dir)},
                "val_names": ["car_1.jpg", "car_4.jpg"],
                "parameters": count_parameters(vae),
                "state": {"epoch": 1, "best_epoch": 1, "seconds": 0.1},
            },
            checkpoint,
        )
        dirs.append(export_checkpoint(checkpoint, root / f"tiny{seed}", data_dir=data_dir, name=f"tiny{seed}"))
    return dirs[0], dirs[1]


@pytest.fixture
def active_model(media, db, tiny_model_dirs) -> ModelVersion:
    """The first tiny model, registered in the (temporary) storage and active."""
    version = model_version_register(model_dir=tiny_model_dirs[0], source=ModelVersion.Source.SHIPPED)
    model_version_activate(version=version, user=None, note="test model")
    return version


@pytest.fixture
def second_model(active_model, tiny_model_dirs) -> ModelVersion:
    return model_version_register(model_dir=tiny_model_dirs[1], source=ModelVersion.Source.TRAINED)


@pytest.fixture
def draw() -> DrawFn:
    """``draw(seed, size=(256, 110), fmt="JPEG", grey=False, facing_left=True)``: a car photo's bytes (JPEG at
    quality 92 unless ``fmt`` says otherwise); each seed is a clearly different photo (tests.support.draw_car)."""

    def photo(seed: int, size: tuple[int, int] = (256, 110), fmt: str = "JPEG", **drawing: Any) -> bytes:
        return encode(draw_car(size, seed=seed, **drawing), fmt, **({"quality": 92} if fmt == "JPEG" else {}))

    return photo


@pytest.fixture
def near_copy() -> Callable[..., bytes]:
    return resave
