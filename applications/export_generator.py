"""Export the generator of a train_stylegan2.py checkpoint: g_ema (float16 by default), args, iteration.

    python -m applications.export_generator --ckpt results/mine/checkpoints/0200000.pt --out mine_g.pt

The file is a quarter of the checkpoint's size (no discriminator, optimiser
states or training copy) and loads wherever a StyleGAN2 ``--ckpt`` does
(``train.py --ckpt mine_g.pt --load_G_only ...``), float16 weights becoming
float32 on load.
"""
import argparse

from training.gan_trainer import generator_export
from utils.checkpoint import load_checkpoint, save_checkpoint
from utils.errors import UserError, exit_on_user_error


@exit_on_user_error
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--ckpt', required=True, help='a train_stylegan2.py checkpoint')
    parser.add_argument('--out', required=True, help='the exported file (.pt)')
    parser.add_argument('--fp32', action='store_true', help='keep float32 weights (default: float16)')
    args = parser.parse_args(argv)
    exported = generator_export(load_checkpoint(args.ckpt), half=not args.fp32)
    try:
        save_checkpoint(exported, args.out)
    except OSError as e:
        raise UserError(f'cannot write {args.out}: {e.strerror or e}') from None
    print(f'wrote {args.out} (g_ema of iteration {exported["iteration"]}, '
          f'{"float32" if args.fp32 else "float16"})')


if __name__ == '__main__':
    main()
