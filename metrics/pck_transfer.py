"""PCK-Transfer: how often keypoints carried from image A to image B land near B's own.

For a pair (A, B), the spatial transformer maps A's keypoints to the
congealed template and from there into B. A keypoint counts as correct at
threshold alpha when its distance to B's annotated keypoint is at most
alpha * r_B, where r_B is

- the larger side of B's bounding box, when the dataset carries per-image
  thresholds (the SPair-71K protocol: ``threshB`` in original pixels times
  ``scaleB``, original pixels -> pixels of the evaluated resolution);
- otherwise the larger side of image B (the CUB protocol).

Only keypoints visible in both images count. PCK-Transfer is the number of
correct keypoints over the number counted, summed over all pairs (and over all
processes under torchrun). The identity baseline predicts A's keypoints
unchanged as B's, on the same pairs with the same thresholds.
"""
import torch
from torch.utils.data import DataLoader, Subset

from metrics import METRICS
from utils.distributed import all_gather_tensor, is_main_process, rank_share
from utils.errors import UserError


def pair_radii(batch, which, alphas, image_size):
    """Per-pair PCK radii in pixels for every alpha.

    Args:
        batch: a collated PCK batch (dict); uses ``thresh{which}`` and
            ``scale{which}`` when present.
        which: 'A' or 'B', the image the transferred keypoints land in.
        alphas: (K,) float tensor on the evaluation device.
        image_size: (height, width) of that image, used without thresholds.
    Returns:
        (N, K) float tensor: alpha_k * r for each pair.
    """
    n = batch[f'kps{which}'].size(0)
    if f'thresh{which}' in batch:
        reference = batch[f'thresh{which}'].float().to(alphas.device)
        if f'scale{which}' in batch:  # original-image pixels -> pixels of the evaluated images
            reference = reference * batch[f'scale{which}'].float().to(alphas.device)
    else:
        reference = torch.full((n,), float(max(image_size)), device=alphas.device)
    return reference.view(n, 1) * alphas.view(1, -1)


def count_correct(predicted, target, visible, radii):
    """Correct and counted keypoints per pair.

    Args:
        predicted, target: (N, P, 2) pixel coordinates (x, y).
        visible: (N, P) bool, keypoints that count.
        radii: (N, K) distance thresholds in pixels.
    Returns:
        (correct (N, K) float, counted (N,) float).
    """
    error = (predicted.float() - target.float()).norm(dim=-1)  # (N, P)
    hits = (error.unsqueeze(-1) <= radii.unsqueeze(1)) & visible.unsqueeze(-1)  # (N, P, K)
    return hits.sum(dim=1).float(), visible.sum(dim=1).float()


def _visibility(batch, which):
    """(N, P) bool visibility: ``vis{which}``, else a third keypoint column, else all visible."""
    if f'vis{which}' in batch:
        return batch[f'vis{which}'].bool()
    keypoints = batch[f'kps{which}']
    if keypoints.size(-1) >= 3:
        return keypoints[..., 2] > 0
    return torch.ones(keypoints.shape[:2], dtype=torch.bool, device=keypoints.device)


def _mirror_visibility(visible, mirrored, permutation):
    """Reorder the visibility of mirrored images like their keypoints are reordered."""
    if permutation is None:
        return visible
    return torch.where(mirrored.view(-1, 1), visible[:, permutation], visible)


def _move(batch, device):
    return {key: value.to(device) if torch.is_tensor(value) else value for key, value in batch.items()}


@torch.no_grad()
def evaluate_batch(t, batch, alphas, flips=True, transfer_both_ways=False, permutation=None, **stn_kwargs):
    """PCK counts of one batch of pairs.

    Args:
        t: spatial transformer with ``transfer_points(imgsA, imgsB, kpsA,
            **stn_kwargs) -> (N, P, 2)`` and, when ``flips``, ``match_flows``.
        batch: collated PCK items on the evaluation device: ``imgsA``,
            ``imgsB`` (N, 3, S, S) in [-1, 1]; ``kpsA``, ``kpsB`` (N, P, 2)
            pixels (or (N, P, 3) with visibility last); ``visA``, ``visB``
            (N, P) bool (default: from the keypoints, else all visible);
            optional ``threshA/B`` and ``scaleA/B`` (N,).
        alphas: (K,) thresholds.
        flips: mirror A and/or B (per pair) to make their flows agree first.
        transfer_both_ways: also transfer B -> A.
        permutation: (P,) keypoint order after a mirror, or None.
    Returns:
        dict with ``correct`` (N, K), ``baseline`` (N, K) and ``counted`` (N,):
        per-pair counts (both directions added when ``transfer_both_ways``).
    """
    imgs_a, imgs_b = batch['imgsA'], batch['imgsB']
    kps_a, kps_b = batch['kpsA'][..., :2].float(), batch['kpsB'][..., :2].float()
    vis_a, vis_b = _visibility(batch, 'A'), _visibility(batch, 'B')
    visible = vis_a & vis_b
    radii_b = pair_radii(batch, 'B', alphas, imgs_b.shape[-2:])
    radii_a = pair_radii(batch, 'A', alphas, imgs_a.shape[-2:]) if transfer_both_ways else None

    baseline, counted = count_correct(kps_a, kps_b, visible, radii_b)
    if transfer_both_ways:
        baseline_back, counted_back = count_correct(kps_b, kps_a, visible, radii_a)
        baseline, counted = baseline + baseline_back, counted + counted_back

    if flips:
        imgs_a, imgs_b, kps_a, kps_b, pick = t.match_flows(imgs_a, imgs_b, kps_a, kps_b, permutation,
                                                           **stn_kwargs)
        pick = pick.view(-1)
        # pick: 0 neither, 1 A mirrored, 2 B mirrored, 3 both (the original's encoding).
        if permutation is not None:
            permutation = torch.as_tensor(permutation, device=vis_a.device).long()
        vis_a = _mirror_visibility(vis_a, pick % 2 == 1, permutation)
        vis_b = _mirror_visibility(vis_b, pick >= 2, permutation)
        visible = vis_a & vis_b

    estimate_b = t.transfer_points(imgs_a, imgs_b, kps_a, **stn_kwargs)
    correct, _ = count_correct(estimate_b, kps_b, visible, radii_b)
    if transfer_both_ways:
        estimate_a = t.transfer_points(imgs_b, imgs_a, kps_b, **stn_kwargs)
        correct = correct + count_correct(estimate_a, kps_a, visible, radii_a)[0]
    return {'correct': correct, 'baseline': baseline, 'counted': counted}


def has_flow_stage(t):
    """Whether ``t`` predicts a residual flow (mirror matching compares flows)."""
    return bool(getattr(t, 'is_flow', True))


def _dataset_permutation(dataset):
    for name in ('permutation', 'mirror_permutation'):
        value = getattr(dataset, name, None)
        if value is not None:
            return torch.as_tensor(value).long()
    return None


@torch.no_grad()
def evaluate_pck_per_pair(t, dataset, alphas, device, batch_size=40, flips=True, num_pairs=None,
                          transfer_both_ways=False, num_workers=0, progress=False, **stn_kwargs):
    """Per-pair PCK counts over a PCK dataset, gathered from every process.

    Args:
        t: spatial transformer (see ``evaluate_batch``), already on ``device``.
        dataset: a PCK dataset (items as in ``datasets.keypoint_pairs.PCKDataset``); its
            ``permutation`` reorders keypoints of mirrored images.
        alphas: sequence of K thresholds.
        device: where the transformer runs.
        batch_size: pairs per forward pass (per process).
        flips: mirror matching of pairs (skipped for transformers without a
            flow stage, whose flows cannot be compared).
        num_pairs: evaluate the first ``num_pairs`` pairs (None: all).
        transfer_both_ways: also evaluate B -> A.
        num_workers: DataLoader worker processes.
        progress: show a progress bar on the main process.
        stn_kwargs: forwarded to the transformer (padding_mode, iters, ...).
    Returns:
        dict with ``index`` (M,) pair indices and ``correct`` (M, K),
        ``baseline`` (M, K), ``counted`` (M,) float counts, on the CPU, one
        row per evaluated pair of all processes, in pair order.
    Raises:
        UserError: ``t`` has several cluster heads.
    """
    if getattr(t, 'num_heads', 1) > 1:
        raise UserError(f'PCK-Transfer is evaluated with single-head transformers; this one has '
                        f'{t.num_heads} cluster heads')
    flips = flips and has_flow_stage(t)
    total = len(dataset) if num_pairs is None else min(int(num_pairs), len(dataset))
    alphas_t = torch.tensor([float(a) for a in alphas], device=device)
    permutation = _dataset_permutation(dataset)
    if permutation is not None:
        permutation = permutation.to(device)
    shard = Subset(dataset, rank_share(list(range(total))))
    loader = DataLoader(shard, batch_size=batch_size, shuffle=False, num_workers=num_workers, drop_last=False)
    if progress and is_main_process():
        from tqdm import tqdm
        loader = tqdm(loader, desc='PCK-Transfer', unit='batch')
    k = len(alphas)
    indices = torch.tensor(shard.indices, dtype=torch.float64)
    rows = [torch.zeros(0, 2 * k + 1, device=device, dtype=torch.float64)]
    for batch in loader:
        counts = evaluate_batch(t, _move(batch, device), alphas_t, flips=flips,
                                transfer_both_ways=transfer_both_ways, permutation=permutation, **stn_kwargs)
        rows.append(torch.cat([counts['correct'], counts['baseline'], counts['counted'].unsqueeze(1)],
                              dim=1).double())
    local = torch.cat([indices.to(device).unsqueeze(1), torch.cat(rows)], dim=1)
    gathered = all_gather_tensor(local).cpu()
    # Pair order, whatever the number of processes (keeps bootstrap resamples reproducible).
    gathered = gathered[gathered[:, 0].argsort()]
    return {'index': gathered[:, 0].long(), 'correct': gathered[:, 1:k + 1].float(),
            'baseline': gathered[:, k + 1:2 * k + 1].float(), 'counted': gathered[:, 2 * k + 1].float()}


def summarize(per_pair, alphas):
    """Per-pair counts -> {'pck': {alpha: fraction}, 'baseline': {...}, 'pairs': M, 'keypoints': n}.

    Fractions are in [0, 1]; NaN when no keypoint was counted.
    """
    counted = float(per_pair['counted'].sum())
    correct = per_pair['correct'].sum(dim=0)
    baseline = per_pair['baseline'].sum(dim=0)

    def fractions(values):
        return {float(a): (float(v) / counted if counted > 0 else float('nan')) for a, v in zip(alphas, values)}

    return {'pck': fractions(correct), 'baseline': fractions(baseline),
            'pairs': int(per_pair['counted'].numel()), 'keypoints': int(counted)}


@METRICS.register('pck_transfer')
def evaluate_pck_transfer(t, dataset, alphas, device, batch_size=40, flips=True, num_pairs=None,
                          transfer_both_ways=False, **stn_kwargs):
    """PCK-Transfer of transformer ``t`` on ``dataset`` at each alpha.

    Under torchrun the pairs are split across the processes and the counts
    are summed over all of them (every process gets the same result); in one
    process everything runs here.

    Args:
        t: spatial transformer on ``device`` with ``transfer_points`` and
            ``match_flows``.
        dataset: PCK dataset (see ``datasets.keypoint_pairs.PCKDataset``).
        alphas: sequence of thresholds (e.g. [0.1, 0.05, 0.01]).
        device: torch.device to run on.
        batch_size: pairs per forward pass and process.
        flips: mirror matching of the two images of each pair (skipped for
            transformers without a flow stage).
        num_pairs: evaluate the first ``num_pairs`` pairs (None: all).
        transfer_both_ways: evaluate B -> A as well as A -> B.
        stn_kwargs: forwarded to the transformer (padding_mode, iters, ...);
            ``num_workers`` and ``progress`` are taken by the loader.
    Returns:
        {'pck': {alpha: fraction in [0, 1]}, 'baseline': {alpha: fraction},
        'pairs': number of pairs evaluated, 'keypoints': keypoints counted}.
    """
    per_pair = evaluate_pck_per_pair(t, dataset, alphas, device, batch_size=batch_size, flips=flips,
                                     num_pairs=num_pairs, transfer_both_ways=transfer_both_ways, **stn_kwargs)
    return summarize(per_pair, alphas)


def bootstrap_pck(per_pair, alphas, num_bootstrap, seed=0):
    """Bootstrap standard deviations of PCK-Transfer.

    Resamples the evaluated pairs with replacement ``num_bootstrap`` times and
    recomputes PCK-Transfer from the stored per-pair counts (no transformer
    passes needed).

    Args:
        per_pair: output of ``evaluate_pck_per_pair``.
        alphas: the K thresholds, in the order of the counts.
        num_bootstrap: number of resamples (at least 2).
        seed: seed of the resampling.
    Returns:
        {alpha: standard deviation of the fraction} (unbiased estimator).
    """
    correct, counted = per_pair['correct'].double(), per_pair['counted'].double()
    m = counted.numel()
    if num_bootstrap < 2 or m == 0:
        raise ValueError('bootstrapping needs at least 2 resamples and 1 pair')
    generator = torch.Generator().manual_seed(int(seed))
    draws = torch.randint(0, m, (num_bootstrap, m), generator=generator)
    # How often each pair is drawn in each resample: (B, M) weights.
    weights = torch.zeros(num_bootstrap, m, dtype=torch.float64).scatter_add_(
        1, draws, torch.ones_like(draws, dtype=torch.float64))
    pcks = (weights @ correct) / (weights @ counted).clamp_min(1).unsqueeze(1)  # (B, K)
    stds = pcks.std(dim=0, unbiased=True)
    return {float(a): float(s) for a, s in zip(alphas, stds)}


def format_pck_table(result, alphas):
    """A markdown table of PCK-Transfer and the identity baseline, in percent.

    Args:
        result: output of ``evaluate_pck_transfer``.
        alphas: thresholds to list, in order.
    Returns:
        str, e.g.::

            | alpha | PCK-Transfer | identity baseline |
            |---|---|---|
            | 0.1 | 57.50% | 12.30% |
    """
    def percent(value):
        return 'n/a' if value != value else f'{100 * value:.2f}%'

    lines = ['| alpha | PCK-Transfer | identity baseline |', '|---|---|---|']
    for alpha in alphas:
        lines.append(f"| {float(alpha):g} | {percent(result['pck'][float(alpha)])} | "
                     f"{percent(result['baseline'][float(alpha)])} |")
    return '\n'.join(lines)
