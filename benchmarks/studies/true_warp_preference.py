"""Does the training loss prefer the true warp to the identity, in each synthetic world?

The synthetic generator knows every sample's pose and its congealing target's
(the mean latent's coarse entries: upright, centred, mean size), so the
similarity warp that takes the sample's face onto the target's is known
exactly. For generator pairs (x, y) at psi = 0 this compares the loss of that
true warp with the loss of leaving x as it is (the identity), for each
``--loss_fn`` and ``--change_weighting`` strength, and prints the mean losses
and the share of samples whose true warp has the lower loss, and the share
whose true warp beats the same warp without its rotation (does the loss teach
turning?). A loss that
prefers the identity for most samples cannot teach the transformer to align,
however long it trains (this is what a scene that stays put does to the
unweighted losses; see docs/synthetic_world.md). ``--localise`` adds rows
for ``--change_weighting_target`` (the weights kept to where the target has
its object, from the sample under other random poses).

    python -m benchmarks.studies.true_warp_preference [--worlds default,scene,photo] [--samples 64]
"""
import argparse

import torch
import torch.nn.functional as F

from models.gangealing import change_weights, reposed_samples, resize_for_stn
from models.perceptual import PERCEPTUAL_LOSSES
from synthetic_world import WorldFactors
from synthetic_world.generator import SyntheticGenerator
from synthetic_world.options import WORLD_PRESETS
from utils.errors import exit_on_user_error

WORLDS = {
    'default': {},
    'scene': {'scene': True},
    'occluders': {'occluders': WORLD_PRESETS['photo']['occluders']},
    'lighting': {'lighting': WORLD_PRESETS['photo']['lighting']},
    'photo': WORLD_PRESETS['photo'],
}


def true_warps(params, target_params, turn=True):
    """(N, 2, 3) affine maps (grid_sample convention: output -> input, normalised coordinates) that put
    each sample's face where its target's is. The target keeps the sample's mirror, so no flip.
    ``turn=False``: the same scale and the same point onto the target's face centre, without the rotation."""
    turn = (params['rotation'] - target_params['rotation']) * float(turn)
    c, s = torch.cos(turn), torch.sin(turn)
    rotation = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)
    matrix = (params['scale'] / target_params['scale'])[:, None, None] * rotation
    shift = 2 * params['translation'] - (matrix @ (2 * target_params['translation'])[..., None])[..., 0]
    return torch.cat([matrix, shift[..., None]], dim=-1)


@exit_on_user_error
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--worlds', default='default,scene,photo', help=f'comma-separated, of {", ".join(WORLDS)}')
    parser.add_argument('--losses', default='laplacian,l2', help='comma-separated --loss_fn names (weight-free)')
    parser.add_argument('--strengths', default='0,0.9', help='comma-separated --change_weighting values')
    parser.add_argument('--samples', type=int, default=64)
    parser.add_argument('--laplacian_levels', type=int, default=4, help="the laplacian loss's levels (the demo trains with 5)")
    parser.add_argument('--size', type=int, default=64, help='generator resolution (the STN works at half)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--localise', action='store_true', help='also rows with --change_weighting_target')
    args = parser.parse_args(argv)
    worlds = args.worlds.split(',')
    if any(w not in WORLDS for w in worlds) or args.samples < 1:
        parser.error(f'--worlds takes names of {", ".join(WORLDS)} and --samples must be >= 1')
    losses = {name: PERCEPTUAL_LOSSES.get(name).build(argparse.Namespace(laplacian_levels=args.laplacian_levels))
              for name in args.losses.split(',')}
    strengths = [float(v) for v in args.strengths.split(',')]
    flow_size = args.size // 2
    print('| world | loss | change weighting | true warp loss | identity loss | true warp preferred '
          '| its turn preferred |')
    print('|---|---|---|---|---|---|---|')
    for world in worlds:
        torch.manual_seed(args.seed)
        generator = SyntheticGenerator(args.size, factors=WorldFactors(**WORLDS[world]))
        w = generator.style(torch.randn(args.samples, generator.style_dim)).unsqueeze(1)
        w = w.repeat(1, generator.n_latent, 1)
        target = w.clone()
        target[:, :generator.coarse_layers] = generator.mean_latent(5000)
        noise = generator.make_noise(args.samples)
        with torch.no_grad():
            x, _ = generator([w], input_is_latent=True, noise=noise)
            y, _ = generator([target], input_is_latent=True, noise=noise)
            params, target_params = generator.world_params(w, noise=noise), generator.world_params(target, noise=noise)
            warped, unturned = (F.grid_sample(x, F.affine_grid(true_warps(params, target_params, turn),
                                                               (args.samples, 3, flow_size, flow_size),
                                                               align_corners=False),
                                              padding_mode='border', align_corners=False) for turn in (True, False))
            x_small, y_small = resize_for_stn(x, flow_size), resize_for_stn(y, flow_size)
            views = [(None, '')]
            if args.localise:
                views.append((reposed_samples(generator, w[:, -1], generator.coarse_layers, flow_size), ', target'))
            for name, loss in losses.items():
                for reposed, label in views:
                    for strength in strengths:
                        weights = change_weights(x_small, y_small, strength, reposed=reposed)
                        true_loss = loss(warped * weights, y_small * weights)
                        identity_loss = loss(x_small * weights, y_small * weights)
                        unturned_loss = loss(unturned * weights, y_small * weights)
                        preferred = (true_loss < identity_loss).float().mean()
                        turned = (true_loss < unturned_loss).float().mean()
                        print(f'| {world} | {name} | {strength:g}{label} | {true_loss.mean():.4f} '
                              f'| {identity_loss.mean():.4f} | {100 * preferred:.0f}% | {100 * turned:.0f}% |',
                              flush=True)


if __name__ == '__main__':
    main()
