"""Fixtures for curation tests: a temporary media root, staff and users, drawn car photos, and a
tiny exported model (built in-process once per session) registered as the active version."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from django.contrib.auth import get_user_model
from PIL import Image, ImageDraw

from reconstruct import services as site_services
from reconstruct.models import ModelVersion

DrawFn = Callable[..., bytes]


def draw_car(
    seed: int,
    size: tuple[int, int] = (256, 110),
    fmt: str = "JPEG",
    grey: bool = False,
    facing_left: bool = True,
) -> bytes:
    """A car-ish picture that differs clearly from other seeds: body, cabin, wheels, random colours."""
    rng = np.random.default_rng(seed)
    w, h = size
    background = tuple(int(c) for c in rng.integers(150, 256, 3))
    image = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(image)
    # Random blocks behind the car make each seed's perceptual hash distinct.
    for _ in range(6):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw.rectangle(
            (x0, y0, x0 + int(rng.integers(w // 8, w // 2)), y0 + int(rng.integers(h // 8, h // 2))), fill=colour
        )
    body = tuple(int(c) for c in rng.integers(0, 256, 3))
    draw.rectangle((w // 10, h * 2 // 5, w * 9 // 10, h * 3 // 4), fill=body)
    cabin = (w // 6, h // 6, w // 2, h * 2 // 5) if facing_left else (w // 2, h // 6, w * 5 // 6, h * 2 // 5)
    draw.rectangle(cabin, fill=body)
    for cx in (w // 4, w * 3 // 4):
        draw.ellipse((cx - h // 7, h * 5 // 8, cx + h // 7, h * 7 // 8), fill=(20, 20, 20))
    if grey:
        image = image.convert("L").convert("RGB")
    out = io.BytesIO()
    image.save(out, fmt, **({"quality": 92} if fmt == "JPEG" else {}))
    return out.getvalue()


def resave(data: bytes, scale: float = 0.5, quality: int = 70) -> bytes:
    """The same photo resized and recompressed: a near duplicate with different bytes."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    image = image.resize((int(image.width * scale), int(image.height * scale)), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return out.getvalue()


@pytest.fixture
def media(settings, media_root: Path, tmp_path: Path) -> Path:
    """tests/conftest.py's temporary MEDIA_ROOT, plus a temporary folder for training runs."""
    settings.CURATION_TRAINING_DIR = tmp_path / "training"
    return media_root


@pytest.fixture
def staff(db):
    return get_user_model().objects.create_user(
        "sam", "sam@example.com", "pw-sam-12345", is_staff=True, is_superuser=True
    )


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
        (data_dir / f"car_{i}.jpg").write_bytes(draw_car(100 + i, size=(64, 28)))
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
    version = site_services.model_version_register(tiny_model_dirs[0], source=ModelVersion.Source.SHIPPED)
    site_services.model_version_activate(version, None, note="test model")
    return version


@pytest.fixture
def second_model(active_model, tiny_model_dirs) -> ModelVersion:
    return site_services.model_version_register(tiny_model_dirs[1], source=ModelVersion.Source.TRAINED)


@pytest.fixture
def draw() -> DrawFn:
    return draw_car


@pytest.fixture
def near_copy() -> Callable[..., bytes]:
    return resave
