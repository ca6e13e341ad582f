"""Dataset curation measured against the synthetic world's known outliers and keypoints.

    python -m benchmarks.bench_curation                      # trains a short synthetic model first
    python -m benchmarks.bench_curation --ckpt results/demo/checkpoints/0002400.pt

Steps (each one the project's own command line, run as a subprocess):
1. ``prepare_data.py --synthetic --outlier_fraction P``: a dataset whose
   outliers (cut, tiny and scrambled faces) are labelled, in the world of
   ``--synthetic_deformation`` (a smooth per-face deformation that gives the
   flow stage work: on the demo's near-rigid world the flow barely moves and
   its roughness is noise);
2. without --ckpt, ``train.py`` at the synthetic defaults (plus that world and
   --tv_weight) for --train_iters iterations (on its own world, which has no
   outliers); a --ckpt must come from the same world;
3. ``applications.flow_scores``: the ROC AUC of the scores for telling
   ordinary images (high scores) from outliers (low scores), and the outlier
   fraction before and after keeping --fraction_retained of the images;
4. ``applications.congeal_dataset`` on the kept images: the spread of each
   true keypoint over the ordinary images (standard deviation of its position,
   as a fraction of the image side, averaged over keypoints) in the input
   images and in the congealed dataset.

Prints a table and the command that made it.

    python -m benchmarks.bench_curation --scores --seeds 2 3     # validation; --seeds 1 reports

``--scores`` (``scores_main``) measures every curation score of
``applications.common.image_scores`` against each image's true alignment error
(``metrics.alignment_error``): Spearman over the ordinary images, outlier ROC
AUC, and the mean true error of the images ``--fraction_retained`` keeps.

    python -m benchmarks.bench_curation --clustering --seed 1

``--clustering`` measures clustering instead (``clustering_main``): a
``--num_heads 2`` model trained on a two-mode world (``--synthetic_modes 2``),
its cluster classifier (``train_cluster_classifier.py``), and on held-out
generated samples and rendered images the adjusted Rand index of the head
assignments against the true modes, plus the classifier's agreement with the
transformer's own assignments, and the same measures for assigning each image
to the head whose congealed mean it is closest to (no classifier).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch

from utils.checkpoint import checkpoint_name
from synthetic_world import NUM_FACTORS
from synthetic_world.deformation import DEFORMATION_FACTORS
from utils.precision import PRECISIONS

# The curation model's world and regulariser, chosen on data seed 2 (reported on seed 1; see docs/benchmarks.md):
# the demo's world and --tv_weight scored best there (0.713); deformed worlds (--synthetic_deformation 0.1 with
# --tv_weight 1000, or 10 after 1200 iterations at 1000) scored 0.44 and 0.38, and a twice wider transformer
# (--stn_channel_multiplier 0.25 --stn_max_channels 64, trained by hand and passed as --ckpt) 0.43.
DEFORMATION = 0.0
TV_WEIGHT = 1000.0

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def print_table(command, rows):
    """Print the command line and a two-column markdown table of (measure, value) rows."""
    width = max(len(name) for name, _ in rows)
    print(f'command: {command}'.rstrip())
    print(f"| {'measure'.ljust(width)} | value |")
    print(f"|{'-' * (width + 2)}|-------|")
    for name, value in rows:
        print(f'| {name.ljust(width)} | {value} |')


def run(args, threads):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=REPO)
    for name in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT'):
        env.pop(name, None)
    result = subprocess.run([sys.executable, *map(str, args)], cwd=REPO, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f'command failed: {" ".join(map(str, args))}\n{result.stderr[-3000:]}')
    return result


def roc_auc(positive, negative):
    """P(a positive scores above a negative), ties counting one half (Mann-Whitney U)."""
    positive, negative = positive.double(), negative.double()
    greater = (positive[:, None] > negative[None, :]).double().sum()
    ties = (positive[:, None] == negative[None, :]).double().sum()
    return float((greater + 0.5 * ties) / (positive.numel() * negative.numel()))


def keypoint_spread(keypoints, size):
    """Mean over keypoints of the standard deviation of their visible positions, / size."""
    spreads = []
    for p in range(keypoints.shape[1]):
        visible = keypoints[:, p, 2] > 0
        if visible.sum() >= 2:
            spreads.append(keypoints[visible, p, :2].std(dim=0).norm() / size)
    return float(torch.stack(spreads).mean())


def main():
    if '--clustering' in sys.argv[1:]:
        return clustering_main([a for a in sys.argv[1:] if a != '--clustering'])
    if '--scores' in sys.argv[1:]:
        return scores_main([a for a in sys.argv[1:] if a != '--scores'])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--ckpt', default=None, help='a trained synthetic-world checkpoint (default: train one)')
    parser.add_argument('--train_iters', type=int, default=2400, help="the demo's full schedule")
    parser.add_argument('--images', type=int, default=200)
    parser.add_argument('--size', type=int, default=64)
    parser.add_argument('--outlier_fraction', type=float, default=0.2)
    parser.add_argument('--fraction_retained', type=float, default=0.9)
    parser.add_argument('--min_effective_resolution', type=int, default=24)
    parser.add_argument('--max_out_of_bounds', type=float, default=0.3,
                        help="congeal_dataset's limit; the synthetic faces are rotated up to 45 degrees, so their "
                             'aligned crops reach past the canvas corners')
    parser.add_argument('--synthetic_deformation', type=float, default=DEFORMATION,
                        help='smooth per-face deformation of the world (model and dataset alike): it gives the '
                             "flow stage work to do, without which its roughness says nothing (0: the demo's "
                             'rigid world)')
    parser.add_argument('--tv_weight', type=float, default=TV_WEIGHT, help="the trained model's --tv_weight")
    parser.add_argument('--seed', type=int, default=1, help='seed of the benchmark dataset')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--precision', default='auto', choices=PRECISIONS,
                        help="--precision of the training run and the applications")
    parser.add_argument('--workdir', default=None, help='keep the intermediate files here (default: a temp folder)')
    args = parser.parse_args()
    work = args.workdir or tempfile.mkdtemp(prefix='bench_curation_')
    os.makedirs(work, exist_ok=True)
    start = time.time()

    world = ['--synthetic_deformation', args.synthetic_deformation]
    data = os.path.join(work, 'data')
    if not os.path.isdir(data):
        run(['prepare_data.py', '--synthetic', '--size', args.size, '--max_images', args.images, '--seed', args.seed,
             '--outlier_fraction', args.outlier_fraction, '--out', data, *world], args.threads)
    ckpt = args.ckpt
    if ckpt is None:
        ckpt = os.path.join(work, 'model', 'checkpoints', checkpoint_name(args.train_iters))
        if not os.path.isfile(ckpt):
            # The deformation's coefficients live in latent coordinates beyond the other factors.
            wide = ['--dim_latent', NUM_FACTORS + DEFORMATION_FACTORS] if args.synthetic_deformation > 0 else []
            run(['train.py', '--exp-name', 'model', '--results', work, '--iter', args.train_iters,
                 '--tv_weight', args.tv_weight, '--precision', args.precision, *world, *wide], args.threads)
    trained = time.time()

    common = ['--ckpt', ckpt, '--real_data_path', data, '--real_size', args.size, '--num_workers', 0,
              '--precision', args.precision]
    run(['-m', 'applications.flow_scores', *common, '--recompute'], args.threads)
    scores = torch.load(os.path.join(data, 'flow_scores.pt'), weights_only=True)
    labels = torch.load(os.path.join(data, 'outliers.pt'), weights_only=True)
    outlier = labels > 0
    from utils.score_files import high_score_indices
    from synthetic_world.outliers import OUTLIER_KINDS
    kept = high_score_indices(scores, args.fraction_retained)
    auc = roc_auc(scores[~outlier], scores[outlier])
    per_kind = {kind: roc_auc(scores[~outlier], scores[labels == k + 1]) for k, kind in enumerate(OUTLIER_KINDS)
                if (labels == k + 1).any()}

    out = os.path.join(work, 'congealed')
    if os.path.isdir(out):
        import shutil
        shutil.rmtree(out)
    run(['-m', 'applications.congeal_dataset', *common, '--out', out, '--output_resolution', args.size,
         '--min_effective_resolution', args.min_effective_resolution, '--max_out_of_bounds', args.max_out_of_bounds,
         '--flow_scores',
         os.path.join(data, 'flow_scores.pt'), '--fraction_retained', args.fraction_retained], args.threads)
    written = torch.load(os.path.join(out, 'dataset_indices.pt'), weights_only=True)
    congealed = torch.load(os.path.join(out, 'keypoints.pt'), weights_only=True)
    from datasets.keypoint_pairs import PCKDataset
    truth = PCKDataset(data, args.size).keypoints
    ordinary = ~outlier[written]
    before = keypoint_spread(truth[written][ordinary], args.size)
    after = keypoint_spread(congealed[ordinary], args.size)
    done = time.time()

    rows = [
        ('images / outliers', f'{labels.numel()} / {int(outlier.sum())}'),
        ('flow-score ROC AUC (outliers score lower)', f'{auc:.3f}'),
        *[(f'  AUC, {kind} outliers only', f'{value:.3f}') for kind, value in per_kind.items()],
        (f'outlier fraction before / after --fraction_retained {args.fraction_retained}',
         f'{float(outlier.float().mean()):.3f} / {float(outlier[kept].float().mean()):.3f}'),
        ('congealed images written (of kept)', f'{written.numel()} / {kept.numel()}'),
        ('outlier fraction of the congealed dataset', f'{float(outlier[written].float().mean()):.3f}'),
        ('keypoint spread (ordinary images, / image side) before -> after congealing', f'{before:.3f} -> {after:.3f}'),
        ('wall time: training / curation', f'{(trained - start) / 60:.1f} min / {(done - trained) / 60:.1f} min'),
    ]
    print_table(f"python -m benchmarks.bench_curation {' '.join(sys.argv[1:])}", rows)
    with open(os.path.join(work, 'bench_curation.json'), 'w') as f:
        json.dump({'auc': auc, 'auc_per_kind': per_kind, 'spread_before': before, 'spread_after': after,
                   'outlier_fraction_before': float(outlier.float().mean()),
                   'outlier_fraction_after': float(outlier[kept].float().mean())}, f, indent=2)


# ----------------------------------------------------------------------------- every score against the truth

@torch.no_grad()
def score_measures(ckpt, data, size, precision, fraction_retained, batch=50, raw_path=None):
    """Every curation score of ``data`` against each image's true alignment error.

    The scores are ``applications.common.image_scores``'s, computed as
    ``applications.flow_scores`` computes them; the truth is
    ``metrics.alignment_error`` (outliers count as misfits). Returns
    {score: {'spearman', 'auc', 'auc_per_kind', 'error_all', 'error_kept'}}
    plus 'truth' (the error itself used as a score: the best any score can do).
    ``raw_path``: also save {'scores', 'errors', 'labels'} there (torch.save).
    """
    from applications.common.data import build_dataset
    from applications.common.models import decide_heads, load_stn, stn_kwargs
    from applications.flow_scores import build_parser, score_loss
    from applications.common.image_scores import SCORE_NAMES, compute_image_scores
    from datasets.keypoint_pairs import PCKDataset
    from metrics.alignment_error import alignment_errors, congealed_keypoints, spearman
    from options import parse_eval_options
    from synthetic_world.outliers import OUTLIER_KINDS, OUTLIERS_FILE
    from utils.score_files import high_score_indices

    device = torch.device('cpu')
    opt = parse_eval_options(build_parser(), ['--ckpt', ckpt, '--real_data_path', data, '--real_size', str(size),
                                              '--num_workers', '0', '--device', 'cpu', '--precision', precision,
                                              '--batch', str(batch)], verbose=False)
    t, classifier = load_stn(opt, device, with_classifier=True)
    dataset = build_dataset(opt)
    _, loss = score_loss(opt, ckpt)
    scores = compute_image_scores(t, opt, dataset, device, list(SCORE_NAMES), classifier, loss, progress=False)

    images = torch.stack([dataset[i] for i in range(len(dataset))])
    truth = PCKDataset(data, size)
    mirrored, heads = [], []
    for chunk in images.split(batch):
        _, chunk_mirrored, chunk_heads, _ = decide_heads(opt, t, classifier, chunk)
        mirrored.append(chunk_mirrored.reshape(-1))
        heads.append(chunk_heads)
    policy = 'cartesian' if opt.num_heads == 1 else torch.cat(heads)
    points, visible = congealed_keypoints(t, images, truth.keypoints, torch.cat(mirrored), truth.permutation,
                                          warp_policy=policy, batch=batch, **stn_kwargs(opt))
    labels_path = os.path.join(data, OUTLIERS_FILE)
    labels = torch.load(labels_path, weights_only=True) if os.path.isfile(labels_path) else \
        torch.zeros(len(dataset), dtype=torch.long)
    errors = alignment_errors(points, visible, t.stn_in_size, misfit=labels > 0)
    outlier = labels > 0
    if raw_path:
        torch.save({'scores': scores, 'errors': errors, 'labels': labels}, raw_path)
    result = {}
    for name, values in [*scores.items(), ('truth', -errors)]:
        kept = high_score_indices(values, fraction_retained)
        entry = {'spearman': spearman(-values[~outlier], errors[~outlier]),
                 'error_all': float(errors.mean()), 'error_kept': float(errors[kept].mean()),
                 'ordinary_error_all': float(errors[~outlier].mean()),
                 'ordinary_error_kept': float(errors[kept][~outlier[kept]].mean())}
        if outlier.any():
            entry['auc'] = roc_auc(values[~outlier], values[outlier])
            entry['auc_per_kind'] = {kind: roc_auc(values[~outlier], values[labels == k + 1])
                                     for k, kind in enumerate(OUTLIER_KINDS) if (labels == k + 1).any()}
        result[name] = entry
    return result


def rank_compositions(raws, max_parts, fraction_retained=0.9):
    """Every mean of the robust z-scores of 1..``max_parts`` pass scores, ranked best first.

    ``raws``: per data seed, {'scores': {name: (N,)}, 'errors': (N,), 'labels': (N,) long} (``score_measures``'s
    ``raw_path`` files, datasets with outliers). The rank is the sum over seeds of the outlier ROC AUC and the
    Spearman correlation with the true error over the ordinary images (the two targets, equally weighted).
    Returns [(parts, total, [(auc, spearman, kept error change), per seed])].
    """
    from itertools import combinations

    from applications.common.image_scores import PASS_SCORES, standardised_mean
    from metrics.alignment_error import spearman
    from utils.score_files import high_score_indices

    available = [name for name in PASS_SCORES if all(name in raw['scores'] for raw in raws)]
    ranked = []
    for count in range(1, max_parts + 1):
        for parts in combinations(available, count):
            per_seed = []
            for raw in raws:
                values, errors, outlier = standardised_mean(raw['scores'], parts), raw['errors'], raw['labels'] > 0
                kept = high_score_indices(values, fraction_retained)
                per_seed.append((roc_auc(values[~outlier], values[outlier]),
                                 spearman(-values[~outlier], errors[~outlier]),
                                 float(errors[kept].mean() / errors.mean() - 1)))
            ranked.append((parts, sum(auc + rho for auc, rho, _ in per_seed), per_seed))
    return sorted(ranked, key=lambda entry: -entry[1])


def print_compositions(ranked, seeds, top=12):
    """The best ``top`` compositions of ``rank_compositions`` as a markdown table."""
    print(f"\nmisfit compositions (mean of robust z-scores), ranked by the sum over data seeds "
          f"{' '.join(map(str, seeds))} of outlier ROC AUC + Spearman")
    print('| parts | AUC + Spearman, summed | per seed: AUC / Spearman / kept error change |')
    print('|---|---|---|')
    for parts, total, per_seed in ranked[:top]:
        cells = '; '.join(f'{auc:.3f} / {rho:.3f} / {100 * change:+.1f}%' for auc, rho, change in per_seed)
        print(f"| {' + '.join(parts)} | {total:.3f} | {cells} |")


def print_score_table(title, measures, fraction_retained):
    """One markdown table: a row per score."""
    print(f'\n{title}')
    print(f'| score | Spearman with true error (ordinary images) | outlier ROC AUC (cut / tiny / scrambled) | '
          f'mean true error, all -> kept by --fraction_retained {fraction_retained} |')
    print('|---|---|---|---|')
    for name, m in measures.items():
        auc = (f"{m['auc']:.3f} ({' / '.join(f'{v:.3f}' for v in m['auc_per_kind'].values())})"
               if 'auc' in m else '-')
        change = (m['error_kept'] - m['error_all']) / m['error_all']
        print(f"| {name} | {m['spearman']:.3f} | {auc} | {m['error_all']:.4f} -> {m['error_kept']:.4f} "
              f'({100 * change:+.1f}%) |')


def scores_main(argv):
    """``--scores``: every curation score against the true per-image alignment error, per data seed."""
    parser = argparse.ArgumentParser(prog='bench_curation --scores', description=scores_main.__doc__)
    parser.add_argument('--ckpt', default=None, help='a trained synthetic-world checkpoint (default: train one, as '
                                                     'without --scores)')
    parser.add_argument('--train_iters', type=int, default=2400)
    parser.add_argument('--train_flags', type=str, default='',
                        help='more train.py flags for the model trained here (one string)')
    parser.add_argument('--seeds', type=int, nargs='+', default=[1],
                        help='data seeds to measure on (choose on some, report once on another)')
    parser.add_argument('--images', type=int, default=200)
    parser.add_argument('--size', type=int, default=64)
    parser.add_argument('--outlier_fraction', type=float, default=0.2)
    parser.add_argument('--fraction_retained', type=float, default=0.9)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--precision', default='auto', choices=PRECISIONS)
    parser.add_argument('--max_parts', type=int, default=3,
                        help='rank every mean of the robust z-scores of up to this many pass scores (the choice of '
                             "image_scores.MISFIT_PARTS: make it on validation seeds)")
    parser.add_argument('--workdir', default=None, help='keep the intermediate files here (default: a temp folder)')
    args = parser.parse_args(argv)
    work = args.workdir or tempfile.mkdtemp(prefix='bench_scores_')
    os.makedirs(work, exist_ok=True)
    start = time.time()
    ckpt = args.ckpt
    if ckpt is None:
        ckpt = os.path.join(work, 'model', 'checkpoints', checkpoint_name(args.train_iters))
        if not os.path.isfile(ckpt):
            run(['train.py', '--exp-name', 'model', '--results', work, '--iter', args.train_iters,
                 '--tv_weight', TV_WEIGHT, '--precision', args.precision, *args.train_flags.split()], args.threads)
    torch.set_num_threads(args.threads)
    everything = {}
    for seed in args.seeds:
        for fraction in (args.outlier_fraction, 0.0):
            data = os.path.join(work, f'data_seed{seed}_outliers{fraction}')
            if not os.path.isdir(data):
                run(['prepare_data.py', '--synthetic', '--size', args.size, '--max_images', args.images, '--seed',
                     seed, '--outlier_fraction', fraction, '--out', data], args.threads)
            measures = score_measures(ckpt, data, args.size, args.precision, args.fraction_retained,
                                      raw_path=data + '_raw.pt')
            everything[f'seed {seed}, outlier fraction {fraction}'] = measures
            print_score_table(f'data seed {seed}, {args.images} images, outlier fraction {fraction}', measures,
                              args.fraction_retained)
    raws = [torch.load(os.path.join(work, f'data_seed{seed}_outliers{args.outlier_fraction}_raw.pt'),
                       weights_only=True) for seed in args.seeds]
    if args.outlier_fraction > 0 and args.max_parts > 0:
        print_compositions(rank_compositions(raws, args.max_parts, args.fraction_retained), args.seeds)
    print(f"\ncommand: python -m benchmarks.bench_curation --scores {' '.join(argv)}"
          f'  ({(time.time() - start) / 60:.1f} min)')
    with open(os.path.join(work, 'bench_scores.json'), 'w') as f:
        json.dump(everything, f, indent=2)


# ----------------------------------------------------------------------------- clustering

def clustering_schedule(iters):
    """train.py flags of a short two-mode clustering run of ``iters`` iterations
    (psi annealed over the first quarter, then one cosine cycle)."""
    anneal = max(1, iters // 4)
    return ['--num_heads', 2, '--synthetic_modes', 2, '--iter', iters, '--anneal_psi', anneal,
            '--period', max(1, iters - anneal), '--ckpt_every', iters, '--vis_every', 10 * iters,
            '--synthetic_eval_images', 100]


@torch.no_grad()
def clustering_measures(classifier_ckpt, samples, images, size, seed, batch=50):
    """Head assignments against the true modes, from a classifier checkpoint.

    Held-out generated samples (their own seeded stream): the transformer's own
    assignment (the trainer's rule at psi = 0) and the classifier's prediction,
    each compared with the sample's true mode (adjusted Rand index), and the
    classifier's agreement with the transformer, and how often the transformer's
    assignment repeats with fresh noise inputs (how far a classifier of the
    image can agree with it). Rendered "real" images
    (dataset ``seed``): the classifier's cluster against the true mode.
    Returns a dict of the measures.
    """
    from models.cluster_classifier import classifier_from_state_dict
    from models.gangealing import assign_samples, resize_for_stn
    from models.perceptual import PERCEPTUAL_LOSSES
    from training.building import build_models
    from utils.checkpoint import load_checkpoint
    from metrics.cluster_agreement import adjusted_rand_index
    from synthetic_world import factors_from_options, render_dataset
    from synthetic_world.dataset import dataset_modes

    ckpt = load_checkpoint(classifier_ckpt, map_location='cpu')
    opt = ckpt['args']
    device = torch.device('cpu')
    generator, _, t_ema, ll = build_models(opt, device)
    generator.load_state_dict(ckpt['g_ema'])
    t_ema.load_state_dict(ckpt['t_ema'])
    ll.load_state_dict(ckpt['ll'])
    loss_fn = PERCEPTUAL_LOSSES.get(opt.loss_fn).build(opt)
    heads = opt.num_heads
    classifier = classifier_from_state_dict(ckpt['classifier'], opt.flow_size, opt.stn_channel_multiplier,
                                            opt.real_size, heads, opt.stn_max_channels).eval()
    stream = torch.Generator().manual_seed(20_000 + seed)
    torch.manual_seed(30_000 + seed)  # the noise inputs are drawn from the global stream: same table on every run
    modes, assigned, predicted, repeated = [], [], [], []
    for start in range(0, samples, batch):
        z = torch.randn(min(batch, samples - start), generator.style_dim, generator=stream)
        x, target, _ = assign_samples(generator, t_ema, ll, loss_fn, z.shape[0], opt.flow_size, heads, opt.flips,
                                      opt.sample_from_full_res, z=z, padding_mode=opt.padding_mode)
        # The same latents with fresh noise inputs (fine detail of the sample and its target): how often
        # the assignment repeats says how far it is decided by the image's content rather than by noise.
        repeated.append(assign_samples(generator, t_ema, ll, loss_fn, z.shape[0], opt.flow_size, heads, opt.flips,
                                       opt.sample_from_full_res, z=z, padding_mode=opt.padding_mode)[1] == target)
        modes.append(generator.true_modes(z))
        assigned.append(target)
        predicted.append(classifier(resize_for_stn(x, opt.flow_size)).argmax(dim=1))
    modes, assigned, predicted = torch.cat(modes), torch.cat(assigned), torch.cat(predicted)
    factors = factors_from_options(opt)
    rendered, _ = render_dataset(images, size, seed, factors)
    real = torch.from_numpy(rendered).permute(0, 3, 1, 2).float() / 127.5 - 1
    real_modes = dataset_modes(images, seed, factors)
    real_clusters = torch.cat([classifier.assign(chunk) % heads for chunk in real.split(batch)])
    head_share = torch.bincount(assigned % heads, minlength=heads).float() / samples
    # Without a classifier: each image to the head whose congealed mean (over the rendered real images) its
    # congealed output is closest to (applications.common.cluster_by_means), fitted on the real images alone.
    from applications.common.cluster_by_means import fit_mean_assigner
    assigner = fit_mean_assigner(t_ema, real, loss_fn, flips=opt.flips, stn_kwargs={'padding_mode': opt.padding_mode})
    by_means_real = torch.cat([assigner.assign(chunk) for chunk in real.split(batch)])
    stream = torch.Generator().manual_seed(20_000 + seed)
    by_means_generated = []
    for start in range(0, samples, batch):
        z = torch.randn(min(batch, samples - start), generator.style_dim, generator=stream)
        x = generator([z])[0]  # (images, latents)
        by_means_generated.append(assigner.assign(resize_for_stn(x, opt.real_size)))
    by_means_generated = torch.cat(by_means_generated)
    return {
        'ari_means_real': adjusted_rand_index(by_means_real % heads, real_modes),
        'ari_means_generated': adjusted_rand_index(by_means_generated % heads, modes),
        'means_agreement_transformer': float((by_means_generated == assigned).float().mean()),
        'means_cluster_agreement_transformer': float((by_means_generated % heads == assigned % heads).float().mean()),
        'means_agreement_classifier_real': float((by_means_real % heads == real_clusters).float().mean()),
        'samples': samples, 'images': images,
        'ari_transformer_generated': adjusted_rand_index(assigned % heads, modes),
        'ari_classifier_generated': adjusted_rand_index(predicted % heads, modes),
        'ari_classifier_real': adjusted_rand_index(real_clusters, real_modes),
        'classifier_accuracy': float((predicted == assigned).float().mean()),
        'classifier_cluster_accuracy': float((predicted % heads == assigned % heads).float().mean()),
        'assignment_repeatability': float(torch.cat(repeated).float().mean()),
        'head_shares': [round(float(v), 3) for v in head_share],
    }


def clustering_main(argv):
    """``--clustering``: train (or take) a two-mode clustering model and its classifier; print the table."""
    parser = argparse.ArgumentParser(prog='bench_curation --clustering', description=clustering_main.__doc__)
    parser.add_argument('--ckpt', default=None, help='a --num_heads 2 model of a --synthetic_modes 2 world '
                                                     '(default: train one)')
    parser.add_argument('--classifier_ckpt', default=None, help="that model's classifier checkpoint (default: "
                                                                'train one)')
    # Both chosen on seed 0 (see docs/benchmarks.md): agreement with the transformer 0.553 / 0.754 / 0.834 after
    # 300 / 3000 / 12000 classifier iterations on a 600-iteration transformer, 0.825 / 0.900 after
    # 3000 / 12000 on a 2400-iteration one (whose heads follow the modes there: ARI 0.649 against 0.072).
    parser.add_argument('--train_iters', type=int, default=2400)
    parser.add_argument('--classifier_iters', type=int, default=12000)
    # Chosen on seed 0 by fitting the classifier to 30000 of the transformer's labelled samples (held-out
    # agreement after 6000 steps 0.849 / 0.883 / 0.886 / 0.894 at 0.001 / 0.003 / 0.005 / 0.01).
    parser.add_argument('--cls_lr', type=float, default=0.01, help="the classifier's --cls_lr")
    parser.add_argument('--samples', type=int, default=1000, help='held-out generated samples')
    parser.add_argument('--images', type=int, default=400, help='held-out rendered images')
    parser.add_argument('--size', type=int, default=64)
    parser.add_argument('--seed', type=int, default=1, help='seed of the training runs and the held-out data '
                                                            '(settings were chosen on seed 0)')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--precision', default='auto', choices=PRECISIONS,
                        help="--precision of the transformer's and the classifier's training runs (the measures "
                             'here run in float32)')
    parser.add_argument('--workdir', default=None, help='keep the intermediate files here (default: a temp folder)')
    args = parser.parse_args(argv)
    work = args.workdir or tempfile.mkdtemp(prefix='bench_clustering_')
    os.makedirs(work, exist_ok=True)
    start = time.time()
    model = args.ckpt
    if model is None:
        model = os.path.join(work, 'model', 'checkpoints', checkpoint_name(args.train_iters))
        if not os.path.isfile(model):
            run(['train.py', '--exp-name', 'model', '--results', work, '--seed', args.seed,
                 '--real_size', args.size, '--gen_size', args.size, '--precision', args.precision,
                 *clustering_schedule(args.train_iters)],
                args.threads)
    trained = time.time()
    classifier = args.classifier_ckpt
    if classifier is None:
        classifier = os.path.join(work, 'classifier', 'checkpoints', checkpoint_name(args.classifier_iters))
        if not os.path.isfile(classifier):
            iters = args.classifier_iters
            run(['train_cluster_classifier.py', '--exp-name', 'classifier', '--results', work, '--ckpt', model,
                 '--seed', args.seed, '--iter', iters, '--period', iters, '--ckpt_every', iters,
                 '--vis_every', iters, '--cls_lr', args.cls_lr, '--precision', args.precision], args.threads)
    classified = time.time()
    torch.set_num_threads(args.threads)
    measures = clustering_measures(classifier, args.samples, args.images, args.size, 50_000 + args.seed)
    done = time.time()
    rows = [
        ('held-out generated samples / rendered images', f"{measures['samples']} / {measures['images']}"),
        ("share of generated samples per head (transformer's assignment)",
         ' / '.join(f'{v:.3f}' for v in measures['head_shares'])),
        ("ARI, transformer's head assignment vs true mode (generated)", f"{measures['ari_transformer_generated']:.3f}"),
        ("ARI, classifier's cluster vs true mode (generated)", f"{measures['ari_classifier_generated']:.3f}"),
        ("ARI, classifier's cluster vs true mode (rendered real images)", f"{measures['ari_classifier_real']:.3f}"),
        ("transformer's assignment repeated with fresh noise inputs",
         f"{measures['assignment_repeatability']:.3f}"),
        ('classifier agreement with the transformer (head and mirror)', f"{measures['classifier_accuracy']:.3f}"),
        ('classifier agreement with the transformer (head alone)', f"{measures['classifier_cluster_accuracy']:.3f}"),
        ('ARI, closest congealed mean (no classifier) vs true mode (rendered real images)',
         f"{measures['ari_means_real']:.3f}"),
        ('ARI, closest congealed mean vs true mode (generated)', f"{measures['ari_means_generated']:.3f}"),
        ('closest congealed mean, agreement with the transformer (head and mirror / head alone)',
         f"{measures['means_agreement_transformer']:.3f} / {measures['means_cluster_agreement_transformer']:.3f}"),
        ("closest congealed mean, agreement with the classifier's cluster (rendered real images)",
         f"{measures['means_agreement_classifier_real']:.3f}"),
        ('wall time: transformer / classifier / measures',
         ' / '.join(f'{minutes / 60:.1f} min' for minutes in (trained - start, classified - trained,
                                                               done - classified))),
    ]
    print_table(f"python -m benchmarks.bench_curation --clustering {' '.join(argv)}", rows)
    with open(os.path.join(work, 'bench_clustering.json'), 'w') as f:
        json.dump(measures, f, indent=2)


if __name__ == '__main__':
    main()
