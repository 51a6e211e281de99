import pytest
import torch

from ml.config import ModelConfig
from ml.model import VAE, count_parameters

TINY = ModelConfig(height=16, width=32, latent_dim=8, widths=(8, 16))


def test_it_maps_images_to_latents_and_back_with_the_configured_shapes() -> None:
    model = VAE(TINY)
    x = torch.rand(3, 3, 16, 32)
    mu, logvar = model.encode(x)
    assert mu.shape == (3, 8) and logvar.shape == (3, 8)
    recon, mu2, _ = model(x)
    assert recon.shape == x.shape
    assert torch.all((recon > 0) & (recon < 1))
    assert torch.equal(mu, mu2)


def test_it_builds_the_default_2_to_1_model_with_a_128_number_latent() -> None:
    config = ModelConfig()
    model = VAE(config).eval()
    out = model.reconstruct(torch.rand(1, 3, config.height, config.width))
    assert out.shape == (1, 3, 64, 128)
    assert config.latent_dim == 128
    assert 1_000_000 < count_parameters(model) < 7_000_000


def test_it_reconstructs_deterministically_from_the_posterior_mean() -> None:
    model = VAE(TINY).eval()
    x = torch.rand(2, 3, 16, 32)
    assert torch.equal(model.reconstruct(x), model.reconstruct(x))


def test_it_samples_reproducibly_for_a_seed() -> None:
    model = VAE(TINY).eval()
    assert torch.equal(model.sample(2, seed=7), model.sample(2, seed=7))
    assert not torch.equal(model.sample(2, seed=7), model.sample(2, seed=8))


def test_it_reparameterizes_around_mu_with_sigma_from_logvar() -> None:
    torch.manual_seed(0)
    mu = torch.full((20000, 1), 2.0)
    logvar = torch.full((20000, 1), 2 * torch.log(torch.tensor(0.5)))
    z = VAE.reparameterize(mu, logvar)
    assert abs(float(z.mean()) - 2.0) < 0.02
    assert abs(float(z.std()) - 0.5) < 0.02


def test_it_rejects_shapes_the_stages_cannot_halve() -> None:
    with pytest.raises(ValueError, match="multiples of 16"):
        ModelConfig(height=60, width=128)


def test_it_round_trips_its_config_through_a_dict() -> None:
    assert ModelConfig.from_dict(TINY.to_dict()) == TINY
    with pytest.raises(ValueError, match="unknown"):
        ModelConfig.from_dict({"size": 3})
