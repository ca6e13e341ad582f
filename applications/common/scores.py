"""Flow scores: ranking images by the smoothness of their residual flow, and filtering a dataset by them.

(Not runnable: imported by the applications.)
"""
import torch

from applications.common.models import check_cluster, decide_heads, stn_kwargs
from utils.argparse_tools import has_option
from utils.distributed import all_gather_tensor, is_main_process, rank_share
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


@torch.no_grad()
def compute_flow_scores(t, opt, dataset, device, classifier=None, progress=True):
    """Score every image of ``dataset`` by the smoothness of its residual flow.

    The score is minus the total variation of the flow the transformer
    predicts for the image as it would be congealed (mirrored where the flip
    decision says, with the head the classifier picks for clustering models).
    Runs over this process's share of the images and gathers every share.

    Returns:
        (len(dataset),) float CPU tensor in dataset order; higher is smoother.
    Raises:
        UserError: a transformer without a flow stage, or a clustering model
            with neither a classifier nor ``--cluster``.
    """
    from torch.utils.data import DataLoader, Subset
    from tqdm import tqdm

    from models.spatial_transformers import flow_total_variation

    if not getattr(t, 'is_flow', False):
        raise UserError('flow scores measure the residual flow, and this spatial transformer has no flow stage '
                        f"(--transform {' '.join(opt.transform)})")
    check_cluster(opt, classifier)
    mine = rank_share(list(range(len(dataset))))
    loader = DataLoader(Subset(dataset, mine), batch_size=opt.batch, shuffle=False,
                        num_workers=opt.num_workers, drop_last=False)
    if progress and is_main_process():
        loader = tqdm(loader, desc='flow scores', unit='batch')
    scores = []
    for images in loader:
        images = images.to(device)
        if classifier is None and opt.num_heads == 1 and not opt.no_flip_inference:
            # The flip decision itself compares flows: keep the chosen flow.
            _, flows = t.forward_with_flip(images, return_flow=True, **stn_kwargs(opt))
        else:
            inputs, _, _, policy = decide_heads(opt, t, classifier, images, getattr(opt, 'cluster', None))
            _, flows = t(inputs, return_flow=True, warp_policy=policy, **stn_kwargs(opt))
        scores.append(-flow_total_variation(flows.float()))
    local = torch.cat(scores) if scores else torch.zeros(0, device=device)
    positions = all_gather_tensor(torch.tensor(mine, dtype=torch.long, device=device))
    gathered = all_gather_tensor(local)
    result = torch.empty(len(dataset), dtype=torch.float32)
    result[positions.cpu()] = gathered.float().cpu()
    return result
