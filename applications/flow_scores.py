"""Score every image of a dataset by how well the trained transformer fits it.

    python -m applications.flow_scores --ckpt cat --real_data_path data/lsun_cats --real_size 256
    python -m applications.flow_scores --score misfit ...        # recommended for cleaning a dataset
    torchrun --nproc_per_node=8 -m applications.flow_scores ...

``--score flow`` (the default) writes ``<real_data_path>/flow_scores.pt``,
the original GANgealing's file: a 1-D float tensor, one score per image in
dataset order, minus the total variation of the image's residual flow.
``--score misfit`` writes ``misfit_scores.pt`` and any other score NAME
(``applications.common.image_scores``) ``NAME_scores.pt``, in the same format;
higher always means a better fit (keep). Other applications use a score file
through ``--flow_scores PATH --fraction_retained F``.

Beside each file, ``NAME_scores.json`` records what made it (the score, the
checkpoint's sha256, the options that change the scores). An existing file is
reused only when its record matches this run; otherwise it is computed again
and the reason printed (``--recompute`` always computes).

Mirrors are chosen as everywhere else (the smoother of the image and its
mirror, unless --no_flip_inference); clustering models use their cluster
classifier to pick each image's head and mirror.
"""
import os

from applications.common.data import build_dataset
from applications.common.image_scores import (DEFAULT_SCORE, MISFIT_PARTS, SCORE_NAMES, check_scores_apply,
                                              compute_image_scores, parts_of)
from applications.common.models import load_stn
from utils.distributed import cleanup, is_main_process, setup_distributed
from utils.errors import UserError, exit_on_user_error
from utils.pretrained import resolve_checkpoint
from utils.score_files import (flow_scores_path, load_flow_scores, read_record, record_problem, save_flow_scores,
                               scores_record)
from options import base_eval_argparse, parse_eval_options

# When a checkpoint does not record the loss it was trained with, distances are measured in this one's space.
FALLBACK_LOSS = 'laplacian'
# Evaluation flags this application does not read (given, they are refused).
UNREAD_OPTIONS = {
    'out': 'the scores are written into the dataset folder (--real_data_path), as the original does',
    'output_resolution': 'scores are computed at the transformer\'s own resolutions',
}


def build_parser():
    parser = base_eval_argparse()
    parser.description = ('Score every dataset image by how well the transformer fits it (writes flow_scores.pt, '
                          'or NAME_scores.pt for --score NAME)')
    parser.add_argument('--score', type=str, default=DEFAULT_SCORE, choices=SCORE_NAMES,
                        help="which score: 'flow' (the original's flow smoothness, flow_scores.pt), 'misfit' "
                             '(recommended for cleaning a dataset), or one of the others (docs/curation.md)')
    parser.add_argument('--recompute', action='store_true',
                        help='compute the scores even if the dataset folder already holds a matching score file')
    parser.add_argument('--cluster', type=int, default=None,
                        help='clustering models: score every image with this head (required without a '
                             "cluster classifier; with one, it decides the mirrors, and without --cluster "
                             "each image's head too)")
    return parser


def score_loss(opt, checkpoint_path):
    """(name, module) of the perceptual distance the checkpoint was trained with (mean_distance, misfit)."""
    import argparse

    from models.perceptual import PERCEPTUAL_LOSSES
    from utils.checkpoint import load_checkpoint

    saved = load_checkpoint(checkpoint_path, map_location='cpu').get('args')
    saved = vars(saved) if isinstance(saved, argparse.Namespace) else (saved if isinstance(saved, dict) else {})
    name = saved.get('loss_fn') or FALLBACK_LOSS
    return name, PERCEPTUAL_LOSSES.get(name).build(argparse.Namespace(**saved))


def score_options(opt, loss_name):
    """The options that change the scores, as recorded beside the file."""
    options = {'real_size': opt.real_size, 'iters': opt.iters, 'padding_mode': opt.padding_mode,
               'flip_inference': not opt.no_flip_inference, 'cluster': opt.cluster, 'precision': opt.precision,
               'dataset_mode': opt.dataset_mode}
    if loss_name is not None:
        options['loss_fn'] = loss_name
    if opt.score == 'misfit':
        # What misfit combines may change between versions: a file made of other parts is stale.
        options['misfit_parts'] = list(MISFIT_PARTS)
    return options


@exit_on_user_error
def main(argv=None):
    opt = parse_eval_options(build_parser(), argv, unread=UNREAD_OPTIONS)
    device, _, _ = setup_distributed(opt.device)
    try:
        dataset = build_dataset(opt)
        path = flow_scores_path(opt.real_data_path, opt.score)
        t, classifier = load_stn(opt, device, with_classifier=True)
        check_scores_apply(t, [opt.score])
        checkpoint_path = resolve_checkpoint(opt.ckpt)
        loss_name, loss_fn = (score_loss(opt, checkpoint_path) if 'mean_distance' in parts_of([opt.score])
                              else (None, None))
        record = scores_record(opt.score, checkpoint_path, len(dataset), score_options(opt, loss_name))
        if not opt.recompute:
            reason = _stale_reason(path, record, len(dataset))
            if reason is None:
                if is_main_process():
                    print(f'Scores already computed: {path} (pass --recompute to compute them again)')
                return
            if reason and is_main_process():
                print(f'Computing {path} again: {reason}')
        scores = compute_image_scores(t, opt, dataset, device, [opt.score], classifier=classifier,
                                      loss_fn=loss_fn.to(device) if loss_fn is not None else None)[opt.score]
        if is_main_process():
            save_flow_scores(scores, path, record)
            print(f'Saved {scores.numel()} {opt.score} scores to {path} (min {scores.min():.5f}, '
                  f'median {scores.median():.5f}, max {scores.max():.5f})')
    finally:
        cleanup()


def _stale_reason(path, record, length):
    """Why the file at ``path`` cannot be reused ('' when there is none; None when it can).

    A file from another dataset (other length) is an error rather than
    silently recomputed: the user decides with --recompute.
    """
    if not os.path.isfile(path):
        return ''
    scores = load_flow_scores(path, length, check_record=False)
    try:
        saved = read_record(path)
    except UserError as e:
        return str(e)
    return record_problem(path, scores, saved, record)


if __name__ == '__main__':
    main()
