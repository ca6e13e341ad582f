"""Score files: filtering a dataset by them, and the original's flow score.

(Not runnable: imported by the applications.)
"""
import torch

from utils.argparse_tools import has_option
from utils.distributed import is_main_process
from utils.errors import UserError


def add_flow_score_options(parser):
    """``--flow_scores`` and ``--fraction_retained`` (the original's names and defaults)."""
    if has_option(parser, '--flow_scores'):
        return parser
    group = parser.add_argument_group('filtering by flow scores')
    group.add_argument('--flow_scores', type=str, default=None,
                       help='flow scores of the dataset (flow_scores.pt written by applications.flow_scores); '
                            'with --fraction_retained below 1 the worst-scoring images are left out, and '
                            'dataset indices (e.g. --dset_indices) count the kept images')
    group.add_argument('--fraction_retained', type=float, default=1.0,
                       help='fraction of the images kept by --flow_scores: those scoring above the '
                            '(1 - F) quantile')
    return parser


def flow_score_problems(opt):
    """Readable problems with the flow-score flags (empty when fine)."""
    problems = []
    if not 0 < opt.fraction_retained <= 1:
        problems.append(f'--fraction_retained must be in (0, 1], got {opt.fraction_retained}')
    elif opt.fraction_retained < 1 and opt.flow_scores is None:
        problems.append('--fraction_retained needs --flow_scores (the scores that rank the images)')
    return problems


def filter_by_flow_scores(opt, dataset):
    """The dataset restricted to the images ``--flow_scores``/``--fraction_retained`` keep.

    Returns:
        (dataset, or a Subset of it, kept (M,) long indices into the original
        dataset in increasing order).
    Raises:
        UserError: unreadable score file, one whose length differs from
            the dataset's (scores of another dataset), or one whose record
            names another checkpoint (stale scores).
    """
    from torch.utils.data import Subset
    from utils.pretrained import resolve_checkpoint
    from utils.score_files import high_score_indices, load_flow_scores

    if getattr(opt, 'flow_scores', None) is None:
        return dataset, torch.arange(len(dataset))
    scores = load_flow_scores(opt.flow_scores, len(dataset), checkpoint_path=resolve_checkpoint(opt.ckpt))
    kept = high_score_indices(scores, opt.fraction_retained)
    if kept.numel() == 0:
        raise UserError(f'--fraction_retained {opt.fraction_retained} keeps none of the {len(dataset)} images')
    if is_main_process():
        print(f'flow scores keep {kept.numel()} of {len(dataset)} images (--fraction_retained '
              f'{opt.fraction_retained})')
    return (dataset if kept.numel() == len(dataset) else Subset(dataset, kept.tolist())), kept


def compute_flow_scores(t, opt, dataset, device, classifier=None, progress=True):
    """Score every image of ``dataset`` by the smoothness of its residual flow (the original's flow score).

    The score is minus the total variation of the flow the transformer
    predicts for the image as it would be congealed (mirrored where the flip
    decision says, with the head the classifier picks for clustering models);
    ``applications.common.image_scores`` computes it with the other scores.

    Returns:
        (len(dataset),) float CPU tensor in dataset order; higher is smoother.
    Raises:
        UserError: a transformer without a flow stage, or a clustering model
            with neither a classifier nor ``--cluster``.
    """
    from applications.common.image_scores import compute_image_scores

    return compute_image_scores(t, opt, dataset, device, ['flow'], classifier=classifier, progress=progress)['flow']
