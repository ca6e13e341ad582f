import pytest
import torch
import torch.nn as nn

from models.latent_learner import (DirectionInterpolator, PCAResult, fit_pca_directions, kmeans_plusplus_init,
                                   pca_W)
from utils.errors import UserError

# Official GANgealing `ll` state-dict shapes (tests/data/official_checkpoint_schema.json).
OFFICIAL_LL_SHAPES = [
    (dict(ndirs=1, inject_index=5, n_latent=14, num_heads=1),
     {'coefficients': (1, 1), 'directions': (1, 512), 'lat_mean': (1, 512)}),
    (dict(ndirs=5, inject_index=6, n_latent=14, num_heads=4),
     {'coefficients': (4, 5), 'directions': (5, 512), 'lat_mean': (1, 512)}),
]


@pytest.mark.parametrize('config,shapes', OFFICIAL_LL_SHAPES)
def test_state_dict_matches_official_schema_and_loads_strictly(config, shapes):
    ll = DirectionInterpolator(config['ndirs'], config['inject_index'], config['n_latent'], 512,
                               num_heads=config['num_heads'])
    state = ll.state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == shapes
    official = {k: torch.randn(s) for k, s in shapes.items()}
    ll.load_state_dict(official, strict=True)
    assert torch.equal(ll.coefficients.detach(), official['coefficients'])
    assert torch.equal(ll.directions, official['directions'])


def make_learner(num_heads=3, ndirs=2, inject=3, n_latent=7, dim=6):
    torch.manual_seed(0)
    ll = DirectionInterpolator(ndirs, inject, n_latent, dim, num_heads=num_heads)
    directions = torch.linalg.qr(torch.randn(dim, ndirs))[0].T
    ll.assign_pca(PCAResult(torch.randn(1, dim), directions, torch.ones(ndirs)))
    ll.assign_coefficients(torch.randn(num_heads, ndirs))
    return ll


def test_psi_one_reproduces_w_everywhere():
    ll = make_learner()
    w = torch.randn(4, 6)
    out = ll(w, 1.0)
    assert out.shape == (4 * 3, 7, 6)
    expected = w.repeat_interleave(3, dim=0).unsqueeze(1).expand(-1, 7, -1)
    assert torch.allclose(out, expected, atol=1e-6)


def test_psi_zero_puts_targets_in_coarse_entries_image_major():
    ll = make_learner()
    w = torch.randn(4, 6)
    out = ll(w, 0.0, unfold=True)  # (N, K, n_latent, dim)
    assert out.shape == (4, 3, 7, 6)
    for k in range(3):
        c_k = ll.congealing_target_latent(k)
        assert torch.allclose(out[:, k, :3], c_k.expand(4, 3, 6), atol=1e-6)
        assert torch.allclose(out[:, k, 3:], w.unsqueeze(1).expand(4, 4, 6), atol=1e-6)
    flat = ll(w, 0.0)
    assert torch.equal(flat[2 * 3 + 1], out[2, 1])  # row n * K + k is sample n, cluster k


def test_intermediate_psi_interpolates_and_accepts_a_list():
    ll = make_learner()
    w = torch.randn(2, 6)
    out = ll([w], 0.25, unfold=True)
    c = ll.target_latents()
    assert torch.allclose(out[1, 2, 0], c[2] + 0.25 * (w[1] - c[2]), atol=1e-6)


def test_target_latent_is_mean_plus_coefficients_times_directions():
    ll = make_learner()
    c1 = ll.congealing_target_latent(1)
    expected = ll.lat_mean[0] + ll.coefficients[1].detach() @ ll.directions
    assert torch.allclose(c1, expected, atol=1e-6)
    with pytest.raises(IndexError):
        ll.congealing_target_latent(3)


def test_gradients_reach_the_coefficients():
    ll = make_learner()
    out = ll(torch.randn(3, 6), 0.3)
    out.square().sum().backward()
    assert ll.coefficients.grad is not None
    assert ll.coefficients.grad.abs().sum() > 0
    assert ll.directions.grad is None and not ll.directions.requires_grad


def test_bad_options_raise_user_errors():
    with pytest.raises(UserError, match='ndirs must be between 1'):
        DirectionInterpolator(0, 3, 7, 6)
    with pytest.raises(UserError, match='inject_index must be between 0'):
        DirectionInterpolator(1, 8, 7, 6)


def test_pca_recovers_known_directions_in_variance_order():
    torch.manual_seed(0)
    dim = 8
    basis = torch.linalg.qr(torch.randn(dim, dim, dtype=torch.float64))[0]
    stddevs = torch.tensor([4.0, 3.0, 2.0, 1.0, 0.5, 0.4, 0.3, 0.2], dtype=torch.float64)
    mean = torch.randn(1, dim, dtype=torch.float64)
    samples = (mean + (torch.randn(40000, dim, dtype=torch.float64) * stddevs) @ basis.T).float()
    pca = fit_pca_directions(samples, 3, chunk_size=7000)
    assert pca.directions.shape == (3, dim) and pca.mean.shape == (1, dim)
    assert torch.allclose(pca.directions @ pca.directions.T, torch.eye(3), atol=1e-5)
    assert torch.allclose(pca.mean.double(), mean, atol=0.05)
    assert (pca.variances[:-1] > pca.variances[1:]).all()
    assert torch.allclose(pca.variances.double(), stddevs[:3] ** 2, rtol=0.05)
    cosines = (pca.directions.double() @ basis[:, :3]).diagonal().abs()
    assert (cosines > 0.999).all()


def test_assign_centroids_projects_onto_directions():
    ll = make_learner(num_heads=2)
    targets = ll.lat_mean + torch.tensor([[1.0, -2.0], [0.5, 0.25]]) @ ll.directions
    ll.assign_centroids(targets)
    assert torch.allclose(ll.coefficients.detach(), torch.tensor([[1.0, -2.0], [0.5, 0.25]]), atol=1e-5)
    assert torch.allclose(ll.target_latents().detach(), targets, atol=1e-5)


class MixtureGenerator(nn.Module):
    """Tiny stand-in generator: W samples from well-separated clusters, images a
    fixed function of the W+ latents."""

    def __init__(self, centres, n_latent=5):
        super().__init__()
        self.n_latent, self.style_dim = n_latent, centres.shape[1]
        self.register_buffer('centres', centres)
        self.render = nn.Linear(self.style_dim, 3 * 4 * 4)
        self.calls = []

    def batch_latent(self, n):
        labels = torch.randint(len(self.centres), (n,))
        return self.centres[labels] + 0.01 * torch.randn(n, self.style_dim)

    def forward(self, styles, input_is_latent=False, randomize_noise=True, **kwargs):
        self.calls.append(randomize_noise)
        latents = styles[0]
        images = torch.tanh(self.render(latents.mean(1))).view(-1, 3, 4, 4)
        return images, None


def per_sample_l2(a, b):
    return (a - b).pow(2).flatten(1).mean(1)


def run_kmeans(seed, centres, n_candidates=60):
    torch.manual_seed(123)  # the candidates; the choices follow `seed`
    generator = MixtureGenerator(centres)
    result = kmeans_plusplus_init(generator, per_sample_l2, num_heads=3, n_candidates=n_candidates,
                                  inject_index=3, batch_size=16, seed=seed)
    return result, generator


def test_kmeans_plusplus_picks_one_centroid_per_cluster_deterministically():
    centres = torch.eye(3, 6) * 20
    first, generator = run_kmeans(0, centres)
    again, _ = run_kmeans(0, centres)
    assert first.shape == (3, 6)
    assert torch.equal(first, again)
    assert not any(generator.calls)  # rendered with fixed noise
    nearest_centre = torch.cdist(first, centres).argmin(1)
    assert sorted(nearest_centre.tolist()) == [0, 1, 2]  # distinct and spread over the clusters


def test_kmeans_plusplus_centroids_are_distinct_candidates_and_gather_is_used():
    centres = torch.zeros(1, 6)  # one tight cluster: spreading cannot help, distinctness must still hold
    gathered = []

    def gather(t):
        gathered.append(tuple(t.shape))
        return t

    torch.manual_seed(5)
    result = kmeans_plusplus_init(MixtureGenerator(centres), per_sample_l2, num_heads=3, n_candidates=20,
                                  inject_index=2, batch_size=8, gather_fn=gather, seed=1)
    assert torch.unique(result, dim=0).shape[0] == 3
    assert (20, 6) in gathered and (20,) in gathered  # latents and distances went through the gather


def test_pca_W_uses_the_gather_function():
    torch.manual_seed(0)
    generator = MixtureGenerator(torch.randn(4, 6) * 3)
    calls = []

    def duplicate(t):  # a stand-in for two ranks
        calls.append(t.shape[0])
        return torch.cat([t, t + 0.001])

    pca = pca_W(generator, 50, ndirs=2, batch=16, gather_fn=duplicate)
    assert calls == [50]
    assert pca.directions.shape == (2, 6)
