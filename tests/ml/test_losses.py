import math

import pytest
import torch

from ml.losses import kl_divergence, squared_error, vae_loss


def test_it_computes_the_kl_term_like_the_hand_formula() -> None:
    mu = torch.tensor([[0.5, -1.0]])
    logvar = torch.tensor([[math.log(0.25), 0.0]])
    # KL(N(mu, s^2) || N(0, 1)) = 1/2 (mu^2 + s^2 - 1 - log s^2), summed over dimensions.
    expected = 0.5 * (0.25 + 0.25 - 1 - math.log(0.25)) + 0.5 * (1.0 + 1.0 - 1 - 0.0)
    assert kl_divergence(mu, logvar).item() == pytest.approx(expected, rel=1e-6)


def test_it_gives_zero_kl_for_the_prior_itself() -> None:
    assert kl_divergence(torch.zeros(4, 8), torch.zeros(4, 8)).abs().max().item() == 0.0


def test_it_ignores_letterbox_pixels_outside_the_mask() -> None:
    x = torch.zeros(1, 3, 4, 4)
    recon = torch.ones(1, 3, 4, 4)
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., 1:3, :] = 1
    assert squared_error(x, recon, mask).item() == 3 * 2 * 4
    terms = vae_loss(x, recon, torch.zeros(1, 2), torch.zeros(1, 2), mask)
    assert terms.mse.item() == 1.0


@pytest.mark.parametrize("mode", ["sum", "calibrated"])
def test_it_returns_finite_terms_with_gradients(mode: str) -> None:
    torch.manual_seed(0)
    x = torch.rand(4, 3, 8, 16)
    recon = torch.rand(4, 3, 8, 16, requires_grad=True)
    mu = torch.randn(4, 6, requires_grad=True)
    logvar = torch.randn(4, 6, requires_grad=True)
    terms = vae_loss(x, recon, mu, logvar, beta=0.5, mode=mode)
    terms.total.backward()
    for value in (terms.total, terms.mse, terms.kl, terms.recon):
        assert torch.isfinite(value)
    assert recon.grad is not None and torch.isfinite(recon.grad).all()


def test_it_weights_kl_by_beta_in_sum_mode() -> None:
    x, recon = torch.zeros(2, 3, 2, 2), torch.full((2, 3, 2, 2), 0.5)
    mu, logvar = torch.ones(2, 3), torch.zeros(2, 3)
    one = vae_loss(x, recon, mu, logvar, beta=1.0, mode="sum")
    two = vae_loss(x, recon, mu, logvar, beta=2.0, mode="sum")
    assert (two.total - one.total).item() == pytest.approx(one.kl.item())
    assert one.recon.item() == pytest.approx(12 * 0.25)


def test_it_rejects_an_unknown_reconstruction_mode() -> None:
    with pytest.raises(ValueError, match="unknown"):
        vae_loss(torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 2, 2), torch.zeros(1, 2), torch.zeros(1, 2), mode="l1")
