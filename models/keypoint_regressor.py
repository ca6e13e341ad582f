"""A small convolutional keypoint regressor, trained by the project on the synthetic world.

It serves as the feature extractor of a generator-quality distance that needs
no downloaded weights (Inception, as FID uses, cannot be fetched everywhere):
its penultimate layer has learnt what the synthetic world's faces are made of
(pose, part positions, shape), so the distribution of those features over
generated images can be compared with their distribution over rendered ones.
"""
import torch
from torch import nn
import torch.nn.functional as F

__all__ = ['KeypointRegressor']


class KeypointRegressor(nn.Module):
    """Images (N, 3, S, S) in [-1, 1] (S a power of two >= 16) -> keypoints (N, P, 2) in [-1, 1].

    Coordinates are normalised: -1 and 1 are the image's outer edges (the
    convention of the sampling grids, align_corners=False). ``features``
    gives the (N, feature_dim) penultimate activations.

    Args:
        num_keypoints: P.
        width: channels of the first convolution (doubled twice).
        feature_dim: width of the penultimate layer.
    """

    def __init__(self, num_keypoints, width=16, feature_dim=128):
        super().__init__()
        self.num_keypoints = num_keypoints
        layers, in_ch = [], 3
        for out_ch in (width, 2 * width, 4 * width, 4 * width):
            layers += [nn.Conv2d(in_ch, out_ch, 3, padding=1), nn.LeakyReLU(0.2),
                       nn.Conv2d(out_ch, out_ch, 3, padding=1, stride=2), nn.LeakyReLU(0.2)]
            in_ch = out_ch
        self.trunk = nn.Sequential(*layers)
        self.embed = nn.Linear(in_ch * 4 * 4, feature_dim)
        self.head = nn.Linear(feature_dim, 2 * num_keypoints)

    def features(self, images):
        """(N, 3, S, S) -> (N, feature_dim) features (after the activation)."""
        out = self.trunk(images)
        out = F.adaptive_avg_pool2d(out, 4)  # any S >= 16 ends on a 4 x 4 grid
        return F.leaky_relu(self.embed(out.flatten(1)), 0.2)

    def forward(self, images):
        return torch.tanh(self.head(self.features(images))).view(-1, self.num_keypoints, 2) * 1.2
