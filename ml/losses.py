"""VAE loss terms as pure functions.

Shapes: ``x``, ``recon`` ``[B, C, H, W]``; ``mask`` ``[B, 1, H, W]`` (1 on the photo, 0 on the
letterbox bars, see ``ml/preprocess.py``); ``mu``, ``logvar`` ``[B, D]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# The variance of the calibrated decoder never goes below this (an rmse of 0.001 on [0, 1]).
MIN_VARIANCE = 1e-6


@dataclass
class LossTerms:
    total: torch.Tensor  # scalar to minimise
    mse: torch.Tensor  # mean squared error per valid pixel and channel (scalar)
    kl: torch.Tensor  # KL divergence per image in nats, averaged over the batch (scalar)
    recon: torch.Tensor  # the reconstruction term that went into ``total`` (scalar)


def squared_error(x: torch.Tensor, recon: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Per-image sum of squared errors over valid pixels: ``[B]``."""
    se = (recon - x) ** 2
    if mask is not None:
        se = se * mask
    return se.flatten(1).sum(1)


def valid_values(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Per-image count of valid values (pixels x channels): ``[B]``."""
    if mask is None:
        return torch.full((x.shape[0],), float(x[0].numel()), device=x.device)
    return mask.flatten(1).sum(1) * x.shape[1]


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, I)) per image: ``[B]``.

    Closed form from Kingma & Welling, "Auto-Encoding Variational Bayes" (2014), appendix B:
    ``-KL = 1/2 * sum(1 + log sigma^2 - mu^2 - sigma^2)``.
    """
    return 0.5 * torch.sum(mu.pow(2) + logvar.exp() - 1.0 - logvar, dim=1)


def vae_loss(
    x: torch.Tensor,
    recon: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    mask: torch.Tensor | None = None,
    beta: float = 1.0,
    mode: str = "sum",
) -> LossTerms:
    """Negative ELBO (up to constants), averaged over the batch.

    ``mode="sum"``: sum of squared errors + beta * KL, the original recipe (a Gaussian decoder with
    a fixed variance of 1/2). ``mode="calibrated"``: a Gaussian decoder whose variance is set to its
    maximum-likelihood value, the batch MSE (Rybkin, Daniilidis & Levine, "Simple and Effective VAE
    Training with Calibrated Decoders", ICML 2021). Then ``recon = n/2 * log(mse)`` per image
    (``n`` valid values): the balance between reconstruction and KL follows the data instead of a
    hand-tuned beta, and reconstructions stop being over-smoothed as the model improves.
    """
    se = squared_error(x, recon, mask)
    n = valid_values(x, mask)
    kl = kl_divergence(mu, logvar)
    mse = se.sum() / n.sum()
    if mode == "sum":
        recon_term = se
    elif mode == "calibrated":
        variance = mse.detach().clamp_min(MIN_VARIANCE)
        # Gaussian NLL with sigma^2 = variance, dropping the constant n/2 * log(2 pi).
        recon_term = se / (2 * variance) + 0.5 * n * torch.log(variance)
    else:
        raise ValueError(f"unknown reconstruction loss {mode!r}")
    total = (recon_term + beta * kl).mean()
    return LossTerms(total=total, mse=mse, kl=kl.mean(), recon=recon_term.mean())
