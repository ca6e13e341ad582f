"""Score every image of a dataset by how smoothly the trained transformer aligns it.

    python -m applications.flow_scores --ckpt cat --real_data_path data/lsun_cats --real_size 256
    torchrun --nproc_per_node=8 -m applications.flow_scores ...

Writes ``<real_data_path>/flow_scores.pt``: a 1-D float tensor, one score per
image in dataset order (the original GANgealing's format). The score is minus
the total variation of the image's residual flow, so images the transformer
had to bend hard (outliers, bad crops, other objects) score lowest. When the
file already exists and fits the dataset it is reused (``--recompute`` makes
a new one). Other applications use it through ``--flow_scores PATH
--fraction_retained F``.

Mirrors are chosen as everywhere else (the smoother of the image and its
mirror, unless --no_flip_inference); clustering models use their cluster
classifier to pick each image's head and mirror.
"""
import os

from applications.common.data import build_dataset
from applications.common.models import load_stn
from applications.common.scores import compute_flow_scores
from options import base_eval_argparse, parse_eval_options
from utils.distributed import cleanup, is_main_process, setup_distributed
from utils.errors import exit_on_user_error
from utils.score_files import flow_scores_path, load_flow_scores, save_flow_scores


def build_parser():
    parser = base_eval_argparse()
    parser.description = 'Score every dataset image by the smoothness of its flow (writes flow_scores.pt)'
    parser.add_argument('--recompute', action='store_true',
                        help='compute the scores even if the dataset folder already holds flow_scores.pt')
    parser.add_argument('--cluster', type=int, default=None,
                        help='clustering models: score every image with this head (required without a '
                             "cluster classifier; with one, it decides the mirrors, and without --cluster "
                             "each image's head too)")
    return parser


@exit_on_user_error
def main(argv=None):
    opt = parse_eval_options(build_parser(), argv)
    device, _, _ = setup_distributed(opt.device)
    try:
        dataset = build_dataset(opt)
        path = flow_scores_path(opt.real_data_path)
        if not opt.recompute and _reusable(path, len(dataset)):
            if is_main_process():
                print(f'Flow scores already computed: {path} (pass --recompute to compute them again)')
            return
        t, classifier = load_stn(opt, device, with_classifier=True)
        scores = compute_flow_scores(t, opt, dataset, device, classifier=classifier)
        if is_main_process():
            save_flow_scores(scores, path)
            print(f'Saved {scores.numel()} flow scores to {path} (min {scores.min():.5f}, '
                  f'median {scores.median():.5f}, max {scores.max():.5f})')
    finally:
        cleanup()


def _reusable(path, length):
    """True when ``path`` holds scores for a dataset of ``length`` images.

    A file from another dataset (other length) is an error rather than
    silently recomputed: the user decides with --recompute.
    """
    if not os.path.isfile(path):
        return False
    load_flow_scores(path, length)
    return True


if __name__ == '__main__':
    main()
