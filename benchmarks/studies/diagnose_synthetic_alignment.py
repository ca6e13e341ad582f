"""Why a transformer trained on the synthetic world aligns as well as it does.

The synthetic world knows every face's pose, so a checkpoint of
``train.py --generator synthetic`` can be taken apart factor by factor:

1. **Pose recovery** on generator samples: how much of each similarity factor
   (rotation, log-scale, shift) the similarity stages undo. For each factor,
   the correlation and the regression slope of the predicted value against
   the true one (slope 1: fully undone; 0: ignored).
2. **Mirror decisions** on the held-out rendered pairs: PCK-Transfer as
   evaluated at the end of training (mirror matching by flow smoothness,
   ``--eval_iters`` similarity passes), how often the relative
   mirror decision is right, and PCK with the true mirror states given (an
   upper bound for better mirror decisions).
3. **Rotation landscape**: the training loss against the target while an
   extra rotation is added to the similarity warp of strongly rotated
   samples (positive: toward upright). A minimum near the rotation still to
   undo means the loss can teach it; a minimum near 0 means the loss itself
   holds the warp back (this is how reflection padding was found to hurt the
   demo: it mirrors copies of large faces into the frame).

    python -m benchmarks.studies.diagnose_synthetic_alignment CHECKPOINT [--samples 300] [--pairs 200]
"""
import argparse
import math

import torch
import torch.nn.functional as F

from models.gangealing import change_weights, reposed_samples, resize_for_stn, sample_pairs
from models.perceptual import PERCEPTUAL_LOSSES
from models.spatial_transformers.geometry import compose_affine
from training.building import build_models
import synthetic_world as world
from utils.checkpoint import load_checkpoint
from utils.errors import UserError, exit_on_user_error


def load_models(path):
    """Checkpoint -> (options, t_ema, generator, ll) on the CPU, gradients off."""
    ckpt = load_checkpoint(path, map_location='cpu')
    opt = ckpt.get('args') if isinstance(ckpt, dict) else None
    if opt is None or getattr(opt, 'generator', None) != 'synthetic' or 't_ema' not in ckpt:
        raise UserError(f"'{path}' is not a checkpoint of train.py on the synthetic generator")
    generator, _, stn, ll = build_models(opt, torch.device('cpu'))
    stn.load_state_dict(ckpt['t_ema'])
    ll.load_state_dict(ckpt['ll'])
    ll.eval().requires_grad_(False)
    return opt, stn, generator, ll


def _fit(predicted, true):
    """Correlation and least-squares slope of predicted against true (1-D tensors)."""
    p, t = predicted - predicted.mean(), true - true.mean()
    return (p @ t / (p.norm() * t.norm()).clamp_min(1e-12)).item(), (p @ t / (t @ t).clamp_min(1e-12)).item()


def similarity_of(stn, images, flow_size):
    """The composed similarity stages' matrices (N, 2, 3) for generator images."""
    return stn.similarity(resize_for_stn(images, flow_size)).view(-1, 2, 3)


def pose_recovery(opt, stn, generator, samples):
    """Rows (factor, correlation, slope) for rotation, log-scale, shift x and y."""
    latents = generator.batch_latent(samples)
    images, w_plus = generator([latents], input_is_latent=True, return_latents=True)
    params = generator.world_params(w_plus, randomize_noise=False)
    m = similarity_of(stn, images, opt.flow_size)
    predicted = {'rotation': torch.atan2(m[:, 1, 0], m[:, 0, 0]),
                 'log-scale': m[:, :, :2].det().abs().sqrt().log(),
                 'shift x': m[:, 0, 2], 'shift y': m[:, 1, 2]}
    true = {'rotation': params['rotation'], 'log-scale': params['scale'].log(),
            'shift x': 2 * params['translation'][:, 0], 'shift y': 2 * params['translation'][:, 1]}
    return [(name, *_fit(predicted[name], true[name].flatten())) for name in predicted]


def _pck(estimate, target, visible, size, alpha):
    hits = ((estimate - target).norm(dim=-1) <= alpha * size) & visible
    return hits.sum().item() / max(1, visible.sum().item())


def _unmirror(images, keypoints, mirrored, size):
    images = torch.where(mirrored[:, None, None, None], images.flip(3), images)
    keypoints = torch.where(mirrored[:, None, None], world.flip_keypoints(keypoints, size), keypoints)
    return images, keypoints


def mirror_decisions(opt, stn, pairs, alpha=0.1):
    """PCK-Transfer@alpha on held-out pairs: as evaluated, split by whether the
    relative mirror decision was right, and with the true mirror states."""
    size, n = opt.real_size, 2 * pairs
    params = world.indexed_params(range(n), opt.synthetic_seed + 1, world.factors_from_options(opt))
    images, keypoints = world.render(params, size)
    images = torch.round((images + 1) * 127.5) / 127.5 - 1  # as stored in 8 bits
    a, b = torch.arange(0, n, 2), torch.arange(1, n, 2)
    mirrored = params['mirror'] > 0.5
    visible = (keypoints[a, :, 2] > 0) & (keypoints[b, :, 2] > 0)
    kw = {'padding_mode': opt.padding_mode, 'iters': getattr(opt, 'eval_iters', 1)}

    images_a, images_b, points_a, pick = stn.match_flows(images[a], images[b], keypoints[a, :, :2],
                                                         permutation=world.MIRROR_PERMUTATION, **kw)
    estimate = stn.transfer_points(images_a, images_b, points_a, **kw)
    flipped_b = pick.view(-1) >= 2
    estimate = torch.where(flipped_b[:, None, None], world.flip_keypoints(estimate, size), estimate)
    right = ((pick.view(-1) % 2 == 1) ^ flipped_b) == (mirrored[a] ^ mirrored[b])
    target = keypoints[b, :, :2]
    rows = [('as evaluated', _pck(estimate, target, visible, size, alpha), pairs),
            ('mirror decision right', _pck(estimate, target, visible & right[:, None], size, alpha),
             int(right.sum())),
            ('mirror decision wrong', _pck(estimate, target, visible & ~right[:, None], size, alpha),
             int((~right).sum()))]
    upright_a, true_a = _unmirror(images[a], keypoints[a], mirrored[a], size)
    upright_b, true_b = _unmirror(images[b], keypoints[b], mirrored[b], size)
    estimate = stn.transfer_points(upright_a, upright_b, true_a[..., :2], **kw)
    rows.append(('true mirror states', _pck(estimate, true_b[..., :2], visible, size, alpha), pairs))
    return rows


def rotation_landscape(opt, stn, generator, ll, samples, degrees=range(-60, 61, 15), min_rotation=30):
    """Mean loss against the target for an extra rotation (degrees, toward upright)
    added to the similarity warp of samples rotated by more than ``min_rotation``,
    weighted as the run trained (``--change_weighting``, ``--change_weighting_target``)."""
    loss_fn = PERCEPTUAL_LOSSES.get(opt.loss_fn).build(opt)
    z = torch.randn(samples, generator.style_dim)
    _, w_plus = generator([z], return_latents=True)
    rotation = generator.world_params(w_plus, randomize_noise=False)['rotation'].flatten()
    keep = rotation.abs() > math.radians(min_rotation)
    if not keep.any():
        return []
    z, sign = z[keep], rotation[keep].sign()
    x, y = sample_pairs(generator, ll, 0.0, len(z), opt.flow_size, z=z, freeze_ll=True)
    base = similarity_of(stn, x, opt.flow_size)
    weights, strength = 1.0, getattr(opt, 'change_weighting', 0.0)
    if strength > 0:
        reposed = (reposed_samples(generator, w_plus[keep, 0], opt.inject, opt.flow_size)
                   if getattr(opt, 'change_weighting_target', False) else None)
        weights = change_weights(resize_for_stn(x, opt.flow_size), y, strength, reposed=reposed)
    rows = []
    for degree in degrees:
        angle = math.radians(degree) * sign
        cos, sin, zero = angle.cos(), angle.sin(), torch.zeros_like(angle)
        extra = torch.stack([cos, -sin, zero, sin, cos, zero], dim=-1).view(-1, 2, 3)
        grid = F.affine_grid(compose_affine(base, extra), (len(z), 3, opt.flow_size, opt.flow_size),
                             align_corners=False)
        warped = F.grid_sample(x, grid, padding_mode=opt.padding_mode, align_corners=False)
        rows.append((degree, loss_fn(warped * weights, y * weights).mean().item()))
    return rows


def report(opt, stn, generator, ll, args):
    """Print the three tables for a loaded run."""
    print('| similarity factor | correlation | slope (1 = fully undone) |\n|---|---|---|')
    for name, corr, slope in pose_recovery(opt, stn, generator, args.samples):
        print(f'| {name} | {corr:.3f} | {slope:.3f} |')
    if stn.is_flow:
        print('\n| held-out pairs | PCK-Transfer@0.1 | pairs |\n|---|---|---|')
        for name, pck, count in mirror_decisions(opt, stn, args.pairs):
            print(f'| {name} | {pck:.3f} | {count} |')
    rows = rotation_landscape(opt, stn, generator, ll, args.samples)
    if rows:
        print('\n| extra rotation toward upright (deg) | loss |\n|---|---|')
        for degree, loss in rows:
            print(f'| {degree:+d} | {loss:.4f} |')


@exit_on_user_error
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('checkpoint', help='a checkpoint written by train.py on the synthetic generator')
    parser.add_argument('--samples', type=int, default=300, help='generator samples for pose recovery')
    parser.add_argument('--pairs', type=int, default=200, help='held-out rendered pairs for mirror decisions')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    if args.samples < 2 or args.pairs < 1:
        parser.error('--samples must be >= 2 and --pairs >= 1')
    torch.manual_seed(args.seed)
    with torch.no_grad():
        report(*load_models(args.checkpoint), args)


if __name__ == '__main__':
    main()
