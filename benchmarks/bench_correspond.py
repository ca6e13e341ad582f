"""Pairwise correspondence (applications.correspond) against true keypoints, beside PCK-Transfer.

    python -m benchmarks.bench_correspond CHECKPOINT [--pairs 500] [--seed 1001] [--size 64]

CHECKPOINT is a transformer trained on the synthetic world (train.py at its
defaults). Held-out faces of the world (seed --seed: the PCK set of a model
trained at --synthetic_seed 1000 uses 1001) are paired consecutively; each
pair's keypoints of A are carried to B by applications.common.correspondence
(what applications.correspond runs) and compared with B's true keypoints
(PCK: within alpha * size pixels). With one image of a pair mirrored, the
transfer maps a left part to a right one, so the truth is B's keypoints in
mirrored order then, as PCK-Transfer counts them. The table gives both
numbers on the same pairs and the identity baseline; they must be equal.
"""
import argparse
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from applications.common.correspondence import transfer_points  # noqa: E402  (after the path set-up)
from applications.common.models import load_stn, stn_kwargs  # noqa: E402
from metrics.pck_transfer import count_correct, evaluate_batch, pair_radii  # noqa: E402
from options import base_eval_argparse, parse_eval_options  # noqa: E402
from synthetic_world import MIRROR_PERMUTATION, render_dataset  # noqa: E402
from utils.image_io import array_to_tensor  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('ckpt')
    parser.add_argument('--pairs', type=int, default=500)
    parser.add_argument('--seed', type=int, default=1001, help='seed of the rendered held-out faces')
    parser.add_argument('--size', type=int, default=64, help='image size (the model\'s --real_size)')
    parser.add_argument('--batch', type=int, default=50)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    opt = parse_eval_options(base_eval_argparse(), ['--ckpt', args.ckpt, '--real_size', str(args.size),
                                                    '--device', 'cpu', '--precision', 'fp32'], verbose=False)
    t = load_stn(opt, torch.device('cpu'))
    images, keypoints = render_dataset(2 * args.pairs, args.size, args.seed)
    images = torch.stack([array_to_tensor(image) for image in images])
    alphas = torch.tensor([0.1, 0.05])
    totals = {'correspond': torch.zeros(2), 'pck_transfer': torch.zeros(2), 'baseline': torch.zeros(2)}
    counted = 0.0
    for start in range(0, args.pairs, args.batch):
        a = torch.arange(start, min(args.pairs, start + args.batch)) * 2
        batch = {'imgsA': images[a], 'imgsB': images[a + 1], 'kpsA': keypoints[a], 'kpsB': keypoints[a + 1]}
        pck = evaluate_batch(t, batch, alphas, flips=True, permutation=MIRROR_PERMUTATION, **stn_kwargs(opt))
        landed, pick = transfer_points(t, opt, batch['imgsA'], batch['imgsB'], keypoints[a][..., :2])
        one_mirrored = ((pick == 1) | (pick == 2)).view(-1, 1)
        truth = torch.where(one_mirrored.unsqueeze(-1), keypoints[a + 1][:, MIRROR_PERMUTATION], keypoints[a + 1])
        visible = (keypoints[a][..., 2] > 0) & (truth[..., 2] > 0)
        correct, _ = count_correct(landed, truth[..., :2], visible, pair_radii(batch, 'B', alphas, (args.size,)))
        totals['correspond'] += correct.sum(0)
        totals['pck_transfer'] += pck['correct'].sum(0)
        totals['baseline'] += pck['baseline'].sum(0)
        counted += float(pck['counted'].sum())  # PCK-Transfer's denominator: keypoints visible in both
    print(f'{args.pairs} held-out pairs (seed {args.seed}, {args.size} px), {int(counted)} keypoints; '
          f'checkpoint {args.ckpt}')
    print('| method | PCK@0.1 | PCK@0.05 |\n|---|---|---|')
    for name, label in (('correspond', 'applications.correspond (point transfer)'),
                        ('pck_transfer', 'PCK-Transfer (metrics.pck_transfer)'), ('baseline', 'identity baseline')):
        values = totals[name] / counted
        print(f'| {label} | {values[0]:.3f} | {values[1]:.3f} |')


if __name__ == '__main__':
    main()
