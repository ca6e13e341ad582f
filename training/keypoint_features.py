"""A generator-quality signal without downloaded weights: distances in a keypoint network's feature space.

``train_keypoint_regressor`` fits models.keypoint_regressor.KeypointRegressor
to faces rendered from the synthetic world (exact keypoints), and
``feature_quality`` compares the distribution of its features over a
generator's images with their distribution over held-out rendered faces
(Fréchet and kernel distances, metrics.feature_distances). Low values mean
the generated faces are, to a network that knows where the parts of a face
are, distributed like rendered ones: pose, shape and part layout are right
and varied. It says nothing about qualities the network ignores.
"""
import torch

from models.keypoint_regressor import KeypointRegressor
from metrics.feature_distances import frechet_distance, kernel_distance
from utils.image_io import array_to_tensor
from synthetic_world import NUM_KEYPOINTS, render_dataset


def rendered_faces(n, size, seed):
    """(images (n, 3, size, size) in [-1, 1], keypoints (n, P, 2) in [-1, 1], visibility (n, P) bool)."""
    images, keypoints = render_dataset(n, size, seed)
    images = torch.stack([array_to_tensor(a) for a in images])
    points = (keypoints[..., :2] + 0.5) / size * 2 - 1  # pixel centres, align_corners=False
    return images, points, keypoints[..., 2] > 0


def keypoint_error(model, images, points, visible, batch=256):
    """Mean distance between predicted and true visible keypoints, as a fraction of the image size."""
    errors = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            pred = model(images[i:i + batch])
            dist = (pred - points[i:i + batch]).norm(dim=-1) / 2  # [-1, 1] spans one image size
            errors.append(dist[visible[i:i + batch]])
    return float(torch.cat(errors).mean())


def train_keypoint_regressor(size, n_train=6000, steps=1500, batch=64, seed=0, lr=2e-3):
    """Fit a KeypointRegressor to ``n_train`` faces rendered with ``seed`` at ``size``.

    Returns the model in eval mode (CPU, float32).
    """
    torch.manual_seed(seed)
    images, points, visible = rendered_faces(n_train, size, seed)
    model = KeypointRegressor(NUM_KEYPOINTS)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    for _ in range(steps):
        idx = torch.randint(n_train, (batch,))
        pred = model(images[idx])
        mask = visible[idx].unsqueeze(-1).float()
        loss = ((pred - points[idx]).pow(2) * mask).sum() / mask.sum().clamp_min(1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return model.eval()


@torch.no_grad()
def features_of(model, images, batch=256):
    """(N, feature_dim) features of images (N, 3, S, S) in [-1, 1]."""
    return torch.cat([model.features(images[i:i + batch]) for i in range(0, len(images), batch)])


@torch.no_grad()
def generated_images(generator, n, batch=100, seed=0, truncation=1.0):
    """``n`` images of a generator with the models.Generator interface, from seeded z."""
    g = torch.Generator().manual_seed(seed)
    mean = generator.mean_latent(4096) if truncation != 1 else None
    out = []
    for i in range(0, n, batch):
        z = torch.randn(min(batch, n - i), generator.style_dim, generator=g)
        out.append(generator([z], truncation=truncation, truncation_latent=mean)[0].clamp(-1, 1))
    return torch.cat(out)


def feature_quality(model, reference, images):
    """{'fd': Fréchet distance, 'kd': kernel distance x 1000} between the features of
    ``reference`` and ``images`` (both (N, 3, S, S) in [-1, 1])."""
    a, b = features_of(model, reference), features_of(model, images)
    return {'fd': frechet_distance(a, b), 'kd': 1000 * kernel_distance(a, b)}
