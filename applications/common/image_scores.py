"""Per-image curation scores: how well the trained transformer fits each image.

(Not runnable: imported by the applications.)

Every score is one float per image, higher = a better fit (keep), computed
from the images alone and the trained transformer (nothing a real dataset
lacks). Each image is congealed as the applications congeal it (mirrored
where the flip decision says, by the head the cluster classifier picks); the
scores then read that congealing:

- ``flow``: minus the total variation of the residual flow (the original
  GANgealing's flow score; ``flow_scores.pt``);
- ``flow_size``: minus the mean length of the residual flow (fraction of the image side);
- ``reapply``: minus the mean displacement (fraction of the image side) of
  the warp the transformer predicts for its own congealed output: an image it
  has aligned needs no further warp;
- ``flip``: minus the mean distance between the image's warp and its
  mirror's warp mirrored back, in template coordinates: for a mirror-symmetric
  template both should put every template point on the same image point;
- ``iteration``: minus the mean distance between the warps with the first
  (similarity) stage applied once and twice (``--iters``);
- ``mean_distance``: minus the distance, in the training loss's feature space
  (``--loss_fn``), of the congealed image from the mean congealed image of
  its head over the whole dataset (a first pass computes the means);
- ``outside``: minus the fraction of the congealed image sampled from
  beyond the image (a face cut by the frame needs content that is not there);
- ``warp_distance``: minus the mean distance (fraction of the image side) of
  the image's sampling grid from the mean grid of its head over the dataset
  (an image that needs an unusual warp: extreme zoom, shift, rotation);
- ``misfit``: the recommended score for cleaning a dataset; see ``MISFIT_PARTS``.

Scores other than ``flow`` need a transformer whose similarity stage comes first
(``reapply``, ``iteration``) or a flow stage (``flow``, ``flow_size``).
"""
import torch

from models.spatial_transformers import flow_total_variation
from models.spatial_transformers.geometry import identity_grid
from utils.errors import UserError

# Scores computed from one congealing pass of each image (plus the extra passes each names).
PASS_SCORES = ('flow', 'flow_size', 'reapply', 'flip', 'iteration', 'mean_distance', 'outside', 'warp_distance')
# Scores that need the dataset's mean congealed image and mean grid of each head (a first pass).
NEEDS_MEANS = ('mean_distance', 'warp_distance')
# The misfit score: the mean of these scores' robust z-scores over the dataset. Chosen on validation data
# (docs/benchmarks.md, "Curation scores against the true alignment error"): on the demo model (the synthetic
# world's defaults, 2400 iterations), `bench_curation --scores --seeds 2 3` ranked every single score and
# every mean of two or three by outlier ROC AUC plus Spearman with the true error, summed over data seeds
# 2 and 3; reapply + iteration ranked first (2.94; iteration alone 2.80, reapply alone 2.79).
MISFIT_PARTS = ('reapply', 'iteration')
SCORE_NAMES = PASS_SCORES + ('misfit',)
DEFAULT_SCORE = 'flow'
NEEDS_FLOW = ('flow', 'flow_size')


def parts_of(names):
    """The pass scores needed to compute ``names`` (in PASS_SCORES order)."""
    wanted = set()
    for name in names:
        if name not in SCORE_NAMES:
            raise UserError(f"unknown score '{name}'; choose one of {', '.join(SCORE_NAMES)}")
        wanted.update(MISFIT_PARTS if name == 'misfit' else (name,))
    return [name for name in PASS_SCORES if name in wanted]


def check_scores_apply(t, names):
    """Raise UserError when the transformer cannot give one of the scores ``names``."""
    parts = parts_of(names)
    transforms = t.config['transforms']
    if not getattr(t, 'is_flow', False):
        missing = [name for name in parts if name in NEEDS_FLOW]
        if missing:
            raise UserError(f"the '{missing[0]}' score measures the residual flow, and this spatial transformer has "
                            f"no flow stage (transforms {' '.join(transforms)}); choose another --score")
    if transforms[0] != 'similarity':
        missing = [name for name in parts if name in ('reapply', 'iteration')]
        if missing:
            raise UserError(f"the '{missing[0]}' score needs a transformer whose first stage is a similarity; "
                            'choose another --score')


def _grid_distance(a, b):
    """(N,) mean distance between two sampling grids (N, R, R, 2), as a fraction of the image side."""
    return (a.float() - b.float()).norm(dim=-1).flatten(1).mean(1) / 2


@torch.no_grad()
def batch_scores(t, inputs, policy, parts, stn_kwargs, loss_fn=None, means=None, heads=None, mean_grids=None):
    """The pass scores ``parts`` of one batch.

    Args:
        t: spatial transformer.
        inputs: (B, 3, S, S) images in [-1, 1], already mirrored where they are congealed mirrored.
        policy: warp policy ('cartesian' for one head, else (B,) long heads).
        parts: names from PASS_SCORES.
        stn_kwargs: forward options (padding_mode, iters).
        loss_fn: perceptual distance ``(a, b) -> (B,)`` (``mean_distance``).
        means: (K, 3, F, F) mean congealed image per head (``mean_distance``).
        heads: (B,) long head of each image (``mean_distance``, ``warp_distance``; default head 0).
        mean_grids: (K, F, F, 2) mean sampling grid per head (``warp_distance``).
    Returns:
        {name: (B,) float tensor, higher = better fit}.
    """
    flow_model = getattr(t, 'is_flow', False)
    congealed, grid, residual = t(inputs, return_warp=True, return_flow=True, warp_policy=policy, **stn_kwargs)
    scores = {}
    if 'flow' in parts:
        scores['flow'] = -flow_total_variation(residual.float())
    if 'flow_size' in parts:
        scores['flow_size'] = -residual.float().norm(dim=-1).flatten(1).mean(1) / 2
    if 'reapply' in parts:
        # The congealed output is the transformer's own input size (flow_size), so it goes in as it is.
        again = t(congealed, return_warp=True, warp_policy=policy, **stn_kwargs)[1]
        identity = identity_grid(again.shape[1], again.shape[0], again.device, again.dtype)
        scores['reapply'] = -_grid_distance(again, identity)
    if 'flip' in parts:
        mirror_grid = t(inputs.flip(3), return_warp=True, warp_policy=policy, **stn_kwargs)[1]
        # The mirror's grid read at the mirrored template point, x negated: a grid for the unmirrored image.
        back = mirror_grid.flip(2) * mirror_grid.new_tensor([-1.0, 1.0])
        scores['flip'] = -_grid_distance(grid, back)
    if 'iteration' in parts:
        kwargs = dict(stn_kwargs, iters=stn_kwargs.get('iters', 1) + 1)
        more = t(inputs, return_warp=True, warp_policy=policy, **kwargs)[1]
        scores['iteration'] = -_grid_distance(grid, more)
    heads = torch.zeros(inputs.shape[0], dtype=torch.long, device=inputs.device) if heads is None else heads
    if 'outside' in parts:
        scores['outside'] = -(grid.float().abs() > 1).any(-1).float().flatten(1).mean(1)
    if 'warp_distance' in parts:
        if mean_grids is None:
            raise ValueError('warp_distance needs mean_grids')
        scores['warp_distance'] = -_grid_distance(grid, mean_grids.to(grid.device)[heads])
    if 'mean_distance' in parts:
        if loss_fn is None or means is None:
            raise ValueError('mean_distance needs loss_fn and means')
        target = means.to(congealed.device, congealed.dtype)[heads]
        if target.shape[-1] != congealed.shape[-1]:
            raise ValueError(f'means of size {target.shape[-1]} for congealed images of size {congealed.shape[-1]}')
        scores['mean_distance'] = -loss_fn(congealed.float(), target.float()).float()
    return scores


def standardise(values):
    """(N,) -> (N,) values minus their median, divided by their median absolute deviation (robust z-scores)."""
    values = values.double()
    centre = values.median()
    spread = (values - centre).abs().median()
    if not spread > 0:
        spread = values.std() if values.numel() > 1 and values.std() > 0 else values.new_tensor(1.0)
    return ((values - centre) / spread).float()


def standardised_mean(parts, names):
    """(N,) mean of the robust z-scores (``standardise``) of the pass scores ``names`` of ``parts`` ({part: (N,)})."""
    return torch.stack([standardise(parts[name]) for name in names]).mean(0)


def combine(name, parts):
    """The score ``name`` over the dataset from its pass scores ({part: (N,)}) -> (N,)."""
    if name != 'misfit':
        return parts[name]
    return standardised_mean(parts, MISFIT_PARTS)


def _loader(opt, dataset, progress, desc):
    from torch.utils.data import DataLoader, Subset
    from tqdm import tqdm

    from utils.distributed import is_main_process, rank_share

    mine = rank_share(list(range(len(dataset))))
    loader = DataLoader(Subset(dataset, mine), batch_size=opt.batch, shuffle=False,
                        num_workers=opt.num_workers, drop_last=False)
    if progress and is_main_process():
        loader = tqdm(loader, desc=desc, unit='batch')
    return mine, loader


def _gather(mine, local, length, device):
    """Every process's (n_r,) scores into one (length,) CPU tensor in dataset order (collective)."""
    from utils.distributed import all_gather_tensor

    positions = all_gather_tensor(torch.tensor(mine, dtype=torch.long, device=device))
    gathered = all_gather_tensor(local.to(device))
    result = torch.empty(length, dtype=torch.float32)
    result[positions.cpu()] = gathered.float().cpu()
    return result


@torch.no_grad()
def congealed_means(t, opt, dataset, device, classifier=None, progress=True):
    """Mean congealed image (K, 3, F, F) and mean sampling grid (K, F, F, 2) of each head over ``dataset``
    (images congealed as the applications congeal them; collective over processes)."""
    from applications.common.models import decide_heads, stn_kwargs
    from models.gangealing import CongealedMean

    _, loader = _loader(opt, dataset, progress, 'congealed means')
    size = t.stn_in_size
    mean = CongealedMean(max(1, opt.num_heads), 3, size, device)
    grids = CongealedMean(max(1, opt.num_heads), 2, size, device)
    for images in loader:
        inputs, _, heads, policy = decide_heads(opt, t, classifier, images.to(device), getattr(opt, 'cluster', None))
        congealed, grid = t(inputs, warp_policy=policy, return_warp=True, **stn_kwargs(opt))
        mean.add(congealed.float(), heads)
        grids.add(grid.float().permute(0, 3, 1, 2), heads)
    return mean.result()[0], grids.result()[0].permute(0, 2, 3, 1)


@torch.no_grad()
def compute_image_scores(t, opt, dataset, device, names, classifier=None, loss_fn=None, progress=True):
    """Score every image of ``dataset`` with each score of ``names``.

    Images are congealed as everywhere else (``applications.common.models.decide_heads``).
    Each process scores its share; the shares are gathered.

    Args:
        t: the trained transformer; opt: evaluation options (batch,
            num_workers, iters, padding_mode, no_flip_inference, cluster, num_heads).
        names: score names (SCORE_NAMES).
        loss_fn: perceptual distance for ``mean_distance`` (and ``misfit``).
    Returns:
        {name: (len(dataset),) float CPU tensor in dataset order, higher = better fit}.
    Raises:
        UserError: a score this transformer cannot give; a clustering model
            with neither a classifier nor ``--cluster``.
    """
    from applications.common.models import check_cluster, decide_heads, stn_kwargs

    parts = parts_of(names)
    check_scores_apply(t, names)
    check_cluster(opt, classifier)
    means, mean_grids = (congealed_means(t, opt, dataset, device, classifier, progress)
                         if any(part in NEEDS_MEANS for part in parts) else (None, None))
    mine, loader = _loader(opt, dataset, progress, 'image scores')
    local = {part: [] for part in parts}
    for images in loader:
        inputs, _, heads, policy = decide_heads(opt, t, classifier, images.to(device), getattr(opt, 'cluster', None))
        for part, values in batch_scores(t, inputs, policy, parts, stn_kwargs(opt), loss_fn, means, heads,
                                         mean_grids).items():
            local[part].append(values)
    gathered = {part: _gather(mine, torch.cat(values) if values else torch.zeros(0, device=device), len(dataset),
                              device) for part, values in local.items()}
    return {name: combine(name, gathered) for name in names}
