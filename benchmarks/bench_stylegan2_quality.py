"""Quality of a StyleGAN2 trained on the synthetic world, measured without downloaded weights.

Trains a small keypoint regressor on rendered faces (seed 0; a minute or two
on a CPU), then compares, in its feature space, held-out rendered faces
(seed 2) with:
- other held-out rendered faces (seed 3): the floor, what a perfect generator scores;
- the checkpoint's g_ema (truncation 1, and --truncation);
- the same architecture with random weights: the ceiling of a generator that learnt nothing.
FD is the Fréchet distance, KD the kernel distance x 1000 (see
training/keypoint_features.py). The regressor's own keypoint error on
held-out faces is printed so that one can tell whether its features know faces.

    python -m benchmarks.bench_stylegan2_quality --ckpt pretrained/stylegan2_synthetic32.pt
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from models.stylegan2 import Generator  # noqa: E402
from training.keypoint_features import (feature_quality, generated_images, keypoint_error,  # noqa: E402
                                        rendered_faces, train_keypoint_regressor)
from training.state import generator_state_dict  # noqa: E402
from utils.checkpoint import load_checkpoint  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--ckpt', required=True, nargs='+', help='train_stylegan2.py checkpoint(s)')
    parser.add_argument('--n', type=int, default=2000, help='images per set')
    parser.add_argument('--truncation', type=float, default=0.7)
    parser.add_argument('--steps', type=int, default=1500, help='training steps of the keypoint regressor')
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    first = load_checkpoint(args.ckpt[0])
    size = first['args'].size
    start = time.time()
    model = train_keypoint_regressor(size, steps=args.steps, seed=0)
    reference, points, visible = rendered_faces(args.n, size, seed=2)
    other, _, _ = rendered_faces(args.n, size, seed=3)
    print(f'keypoint regressor at {size} px: held-out error {keypoint_error(model, reference, points, visible):.3f} '
          f'of the image size ({time.time() - start:.0f} s to train)', flush=True)

    rows = [('rendered (floor)', feature_quality(model, reference, other))]
    for path in args.ckpt:
        ckpt = load_checkpoint(path)
        a = ckpt['args']
        g = Generator(a.size, a.latent, a.n_mlp, channel_multiplier=a.channel_multiplier,
                      channel_max=getattr(a, 'channel_max', 512))
        g.load_state_dict({k: v.float() for k, v in generator_state_dict(ckpt, path).items()})
        g.eval()
        name = f"{os.path.basename(path)} (iteration {ckpt.get('iteration', '?')})"
        rows.append((name, feature_quality(model, reference, generated_images(g, args.n))))
        rows.append((f'{name}, psi {args.truncation}',
                     feature_quality(model, reference, generated_images(g, args.n, truncation=args.truncation))))
    torch.manual_seed(0)
    a = first['args']
    random_g = Generator(a.size, a.latent, a.n_mlp, channel_multiplier=a.channel_multiplier,
                         channel_max=getattr(a, 'channel_max', 512)).eval()
    rows.append(('random weights (ceiling)', feature_quality(model, reference, generated_images(random_g, args.n))))

    print()
    print(f'| images vs held-out rendered ({args.n} each) | FD | KD x 1000 |')
    print('|---|---|---|')
    for name, q in rows:
        print(f"| {name} | {q['fd']:.2f} | {q['kd']:.2f} |")


if __name__ == '__main__':
    main()
