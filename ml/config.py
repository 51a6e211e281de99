"""Configuration dataclasses shared by training, export and serving.

Torch-free on purpose: the serving runtime rebuilds a model's preprocessing from the metadata JSON
that export writes next to the ONNX files, so it needs these classes without torch.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and input shape of the VAE.

    The input is ``[B, channels, height, width]`` in [0, 1]. Car photos are 1.75 to 4 times wider
    than tall, so the default input is 2:1 (see ``ml/preprocess.py`` for the letterboxing).
    """

    height: int = 64
    width: int = 128
    channels: int = 3
    latent_dim: int = 128
    # Channels after each stride-2 stage of the encoder; the decoder mirrors them.
    widths: tuple[int, ...] = (32, 64, 128, 256)
    # Residual blocks per decoder stage (0 reproduces the plain DCGAN-style decoder).
    decoder_res_blocks: int = 1
    # Value that fills the letterbox bars in the model input (grey keeps it away from both
    # the white studio backgrounds and dark cars).
    pad_value: float = 0.5

    def __post_init__(self) -> None:
        factor = 2 ** len(self.widths)
        if self.height % factor or self.width % factor:
            raise ValueError(
                f"height and width must be multiples of {factor} for {len(self.widths)} stages, "
                f"got {self.height}x{self.width}"
            )
        if self.latent_dim < 1 or self.channels not in (1, 3):
            raise ValueError("latent_dim must be >= 1 and channels 1 or 3")

    @property
    def bottom(self) -> tuple[int, int]:
        """Spatial size ``(h, w)`` at the bottleneck."""
        factor = 2 ** len(self.widths)
        return self.height // factor, self.width // factor

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["widths"] = list(self.widths)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        data = dict(data)
        if "widths" in data:
            data["widths"] = tuple(data["widths"])
        return cls(**data)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run besides the data."""

    model: ModelConfig = field(default_factory=ModelConfig)
    batch_size: int = 32
    lr: float = 1e-3
    # The original recipe drops to 1e-4 "for the last part"; we drop when validation plateaus.
    lr_final: float = 1e-4
    # ... and at the latest for this last fraction of the epochs, so a fixed-length run gets it too.
    lr_final_fraction: float = 0.2
    epochs: int = 200
    # "sum": sum of squared errors per image (the original recipe).
    # "calibrated": Gaussian decoder whose variance is the batch MSE (sigma-VAE, see losses.py).
    recon: str = "calibrated"
    beta: float = 1.0
    # Linear KL warm-up over this many epochs (Bowman et al. 2016) avoids early posterior collapse.
    beta_warmup_epochs: int = 5
    # Optional piecewise-linear schedule of (epoch, beta) points; when given it replaces ``beta``
    # and the warm-up. Epochs may be fractional; before the first point and after the last the
    # nearest value holds.
    beta_schedule: tuple[tuple[float, float], ...] = ()
    val_fraction: float = 0.1
    # Epochs without a validation improvement before the learning rate drops, then before stopping.
    patience: int = 6
    min_delta: float = 1e-4
    hflip: bool = True
    # A ``file,facing`` CSV (``python -m ml.orientation --out``; left / right / front / rear) that turns
    # every photo to face left: ``right`` photos are mirrored, in training and validation alike. With
    # it, ``hflip`` mirrors only the ``front`` and ``rear`` photos (a mirrored side view would face
    # right again). Empty: photos are used as they are.
    facings: str = ""
    # Random shifts of the photo inside the frame (pixels, each way) and colour jitter (relative
    # brightness / contrast / saturation change), drawn per image and epoch.
    shift: int = 0
    jitter: float = 0.0
    # Exponential moving average of the weights (0 disables): what is evaluated and exported.
    ema_decay: float = 0.0
    seed: int = 0
    threads: int = 2

    def __post_init__(self) -> None:
        if self.recon not in ("sum", "calibrated"):
            raise ValueError(f"recon must be 'sum' or 'calibrated', got {self.recon!r}")
        if not 0 < self.val_fraction < 1:
            raise ValueError("val_fraction must be between 0 and 1")
        if any(b[0] > a[0] for a, b in zip(self.beta_schedule[1:], self.beta_schedule, strict=False)):
            raise ValueError("beta_schedule epochs must increase")
        if self.batch_size < 1 or self.epochs < 1:
            raise ValueError("batch_size and epochs must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["model"] = self.model.to_dict()
        data["beta_schedule"] = [list(point) for point in self.beta_schedule]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown training config keys: {sorted(unknown)}")
        data = dict(data)
        data["model"] = ModelConfig.from_dict(data.get("model", {}))
        data["beta_schedule"] = tuple(tuple(float(v) for v in point) for point in data.get("beta_schedule", ()))
        return cls(**data)

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)
