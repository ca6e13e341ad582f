"""A picture of what a synthetic-world checkpoint does to held-out renders of its world.

Renders the checkpoint's world (its ``--synthetic_*`` flags, e.g. the photo
preset) at its ``--real_size`` from the held-out seed (``--synthetic_seed`` + 1,
the PCK set's), congeals the images with the checkpoint's transformer, and
writes one PNG: the top row shows inputs with, last, the plain mean of the
``--mean_images`` inputs; the bottom row their congealed versions with, last,
the congealed mean (sharp where the object is aligned).

    python -m benchmarks.studies.photo_world_figure CHECKPOINT OUT.png [--columns 8] [--mean_images 200]
"""
import argparse

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.utils import make_grid

from synthetic_world import factors_from_options, indexed_params, render
from utils.checkpoint import load_checkpoint
from utils.errors import UserError, exit_on_user_error
from utils.atomic_io import atomic_write
from utils.image_io import tensor_to_uint8
from training.building import build_models


@exit_on_user_error
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('ckpt', help='a checkpoint of train.py on the synthetic generator')
    parser.add_argument('out', help='PNG to write')
    parser.add_argument('--columns', type=int, default=8, help='images shown per row')
    parser.add_argument('--mean_images', type=int, default=200, help='images averaged into the means')
    parser.add_argument('--upscale', type=int, default=2, help='nearest-neighbour zoom of every tile')
    args = parser.parse_args(argv)
    if args.columns < 1 or args.mean_images < args.columns or args.upscale < 1:
        parser.error('--columns must be >= 1, --mean_images >= --columns and --upscale >= 1')
    ckpt = load_checkpoint(args.ckpt, map_location='cpu')
    opt = ckpt.get('args') if isinstance(ckpt, dict) else None
    if opt is None or getattr(opt, 'dataset_mode', None) != 'synthetic' or 't_ema' not in ckpt:
        raise UserError(f"'{args.ckpt}' is not a checkpoint of train.py with --dataset_mode synthetic")
    _, _, stn, _ = build_models(opt, torch.device('cpu'))
    stn.load_state_dict(ckpt['t_ema'])
    stn.eval().requires_grad_(False)
    params = indexed_params(range(args.mean_images), opt.synthetic_seed + 1, factors_from_options(opt))
    with torch.no_grad():
        images, _ = render(params, opt.real_size)
        congealed = torch.cat([stn(batch, padding_mode=opt.padding_mode, iters=opt.eval_iters)
                               for batch in images.split(50)])
    size = images.shape[-1]
    congealed = F.interpolate(congealed, size=(size, size), mode='bilinear', align_corners=False)
    top = torch.cat([images[:args.columns], images.mean(0, keepdim=True)])
    bottom = torch.cat([congealed[:args.columns], congealed.mean(0, keepdim=True)])
    grid = torch.cat([top, bottom])
    if args.upscale > 1:
        grid = F.interpolate(grid, scale_factor=args.upscale, mode='nearest')
    grid = make_grid(((grid + 1) / 2).clamp(0, 1), nrow=args.columns + 1, padding=2, pad_value=1)
    picture = Image.fromarray(tensor_to_uint8(grid, value_range=(0, 1)))
    atomic_write(args.out, lambda f: picture.save(f, format='PNG', optimize=True))
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
