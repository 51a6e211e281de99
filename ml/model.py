"""The convolutional VAE (torch only; no web, no I/O).

Interface after pytorch/examples ``vae/main.py``: ``encode -> (mu, logvar)``, ``reparameterize``,
``decode``. Shapes: images ``[B, C, H, W]`` in [0, 1]; latents ``[B, latent_dim]``.
"""

from __future__ import annotations

import torch
from torch import nn

from ml.config import ModelConfig


def _act() -> nn.Module:
    # LeakyReLU rather than SiLU: ONNX Runtime fuses Conv+LeakyRelu into one kernel on CPU.
    return nn.LeakyReLU(0.2, inplace=True)


class ResBlock(nn.Module):
    """``x + conv(act(bn(conv(x))))``: extra decoder depth at constant resolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            _act(),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
        )
        self.out = _act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(x + self.body(x))


class Encoder(nn.Module):
    """``[B, C, H, W] -> (mu, logvar)``, each ``[B, latent_dim]``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = config.channels
        for width in config.widths:
            layers += [nn.Conv2d(channels, width, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(width), _act()]
            channels = width
        self.features = nn.Sequential(*layers)
        bottom_h, bottom_w = config.bottom
        self.head = nn.Linear(channels * bottom_h * bottom_w, 2 * config.latent_dim)
        self.latent_dim = config.latent_dim

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        stats = self.head(torch.flatten(self.features(x), 1))
        return stats[:, : self.latent_dim], stats[:, self.latent_dim :]


class Decoder(nn.Module):
    """``[B, latent_dim] -> [B, C, H, W]`` in (0, 1)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        widths = list(reversed(config.widths))
        self.bottom = (widths[0], *config.bottom)
        self.project = nn.Linear(config.latent_dim, widths[0] * config.bottom[0] * config.bottom[1])
        layers: list[nn.Module] = [nn.BatchNorm2d(widths[0]), _act()]
        # Upsampling stages: widths[i] -> widths[i+1], and a last one back to full resolution
        # at the smallest width. Residual blocks sit at the coarse stages, where the decoder
        # decides shapes; the finest stage stays cheap.
        targets = [*widths[1:], widths[-1]]
        for index, (width, target) in enumerate(zip(widths, targets, strict=True)):
            if index < len(widths) - 1:
                layers += [ResBlock(width) for _ in range(config.decoder_res_blocks)]
            layers += [
                nn.ConvTranspose2d(width, target, 4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(target),
                _act(),
            ]
        layers += [nn.Conv2d(widths[-1], config.channels, 3, padding=1), nn.Sigmoid()]
        self.features = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.project(z).view(-1, *self.bottom)
        return self.features(x)


class VAE(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(x)

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """``z = mu + sigma * eps`` with ``eps ~ N(0, I)``, differentiable in mu and logvar."""
        return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training pass: a sampled reconstruction, plus the posterior ``(mu, logvar)``."""
        mu, logvar = self.encode(x)
        return self.decode(self.reparameterize(mu, logvar)), mu, logvar

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Serving pass: decode the posterior mean (deterministic)."""
        return self.decode(self.encode(x)[0])

    @torch.no_grad()
    def sample(self, n: int, seed: int) -> torch.Tensor:
        """Decode ``n`` draws from the prior, reproducibly for a given seed."""
        generator = torch.Generator().manual_seed(seed)
        z = torch.randn(n, self.config.latent_dim, generator=generator)
        return self.decode(z)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
