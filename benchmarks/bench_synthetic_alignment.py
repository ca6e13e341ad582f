"""Quality benchmark of the embedded default, and of GANgealing through a learned StyleGAN2.

Trains ``python train.py`` at the synthetic-world defaults (CPU unless told
otherwise), then reports PCK-Transfer@0.1/0.05 on held-out rendered pairs
next to the identity (no-alignment) baseline, and the wall time.

    python -m benchmarks.bench_synthetic_alignment [--device cpu] [extra train.py flags]

Target: PCK-Transfer@0.1 >= 0.90 and >= 0.40 above the baseline within 10 CPU
minutes on 2 cores.

With ``--generator stylegan2 --ckpt X`` (a checkpoint of train_stylegan2.py
trained on the synthetic world, e.g. pretrained/stylegan2_synthetic32.pt)
GANgealing runs through that generator's *learned* latent space instead
(its architecture is read from the checkpoint's ``args``), on the same
held-out rendered pairs at the generator's resolution, and the hand-built
generator is run at that resolution too (``--no_handbuilt`` skips it), so
the table shows both next to the baseline:

    python -m benchmarks.bench_synthetic_alignment --generator stylegan2 --ckpt pretrained/stylegan2_synthetic32.pt

``--worlds default,scene,occluders,lighting,photo`` trains once per world
(today's world, each photo factor alone at the photo preset's strength, the
photo preset; docs/synthetic_world.md), ``--jobs 2`` two at a time, and
``--synthetic_seed S`` picks the held-out set (the PCK pairs use S + 1:
choose settings on validation seeds, report on another). ``--render_speed``
only times the renderer (images per second at 64 x 64, one thread) in every
listed world, with the ratio of per-image times to today's world.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from utils.checkpoint import load_checkpoint  # noqa: E402  (after the path set-up)

# The CPU-demo schedule of the hand-built generator (models/generators/synthetic.py),
# spelled out for a StyleGAN2, whose component sets no synthetic-world defaults,
# except the loss: a learned generator's coarse latents also set the background's
# colour layout, which no warp can match, and the laplacian loss puts 8/15 of its
# weight on the 4 x 4 residual at 32 px. Chosen on a validation world
# (--synthetic_seed 3000, generator iteration 58674), PCK@0.1: laplacian with
# 4 / 3 / 2 / 1 levels 0.486 / 0.575 / 0.594 / 0.612, l2 0.623 (baseline 0.177).
STYLEGAN2_DEMO = ['--dataset_mode', 'synthetic', '--loss_fn', 'l2', '--padding_mode', 'border',
                  '--stn_channel_multiplier', '0.125', '--stn_max_channels', '32',
                  '--transform', 'similarity', 'similarity', 'flow', '--sample_from_full_res',
                  '--batch', '10', '--stn_lr', '0.006', '--iter', '2400', '--anneal_psi', '600', '--period', '1800',
                  '--vis_every', '1000', '--ckpt_every', '1000', '--eval_iters', '1', '--n_mean', '200',
                  '--n_sample', '16', '--vis_batch_size', '50', '--n_pca', '20000']


def stylegan2_flags(ckpt_path, inject):
    """train.py flags that rebuild the checkpoint's generator and align through it."""
    args = load_checkpoint(ckpt_path)['args']
    size = args.size
    return ['--generator', 'stylegan2', '--ckpt', ckpt_path, '--load_G_only', '--gen_size', str(size),
            '--real_size', str(size), '--flow_size', str(min(32, size)), '--dim_latent', str(args.latent),
            '--n_mlp', str(args.n_mlp), '--gen_channel_multiplier', str(args.channel_multiplier),
            '--gen_channel_max', str(args.channel_max), '--inject', str(inject)] + STYLEGAN2_DEMO, size


# The world each --worlds name trains and evaluates in (the photo factors alone at the preset's strengths).
WORLDS = {
    'default': [],
    'scene': ['--synthetic_scene'],
    'occluders': ['--synthetic_occluders', '2'],
    'lighting': ['--synthetic_lighting', '0.5'],
    'photo': ['--synthetic_world', 'photo'],
}


def run_many(jobs, results, args):
    """Train every (label, name, flags) of ``jobs``, ``args.jobs`` at a time; [(label, report, wall)]."""
    pending, running, done = list(jobs), [], {}
    while pending or running:
        while pending and len(running) < args.jobs:
            label, name, flags = pending.pop(0)
            command = [sys.executable, 'train.py', '--exp-name', name, '--results', results, '--device',
                       args.device, '--synthetic_eval_images', str(2 * args.pairs), '--seed', str(args.seed)] + flags
            print('running:', ' '.join(command), flush=True)
            log = open(os.path.join(results, f'{name}.log'), 'w') if args.jobs > 1 else None
            running.append((label, name, subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=log), time.time(), log))
        time.sleep(1)
        for item in list(running):
            label, name, proc, start, log = item
            if proc.poll() is None:
                continue
            running.remove(item)
            if log:
                log.close()
            if proc.returncode:
                raise SystemExit(f'error: the run {name} failed (exit {proc.returncode}); see its log in {results}')
            with open(os.path.join(results, name, 'pck.json')) as f:
                done[name] = (label, json.load(f), time.time() - start)
    return [done[name] for _, name, _ in jobs]


def run(name, flags, results, args):
    (_, report, wall), = run_many([(name, name, flags)], results, args)
    return report, wall


def render_speed(worlds, count=256, size=64, rounds=6):
    """Print images per second of the renderer in each world (one thread) and the time ratio to the first."""
    import torch
    from synthetic_world import WorldFactors, render_dataset
    from synthetic_world.options import WORLD_PRESETS
    torch.set_num_threads(1)
    factors = {world: WorldFactors(**{'default': {}, 'scene': {'scene': True},
                                      'occluders': {'occluders': WORLD_PRESETS['photo']['occluders']},
                                      'lighting': {'lighting': WORLD_PRESETS['photo']['lighting']},
                                      'photo': WORLD_PRESETS['photo']}[world]) for world in worlds}
    per_image = {world: float('inf') for world in worlds}
    for world in worlds:
        render_dataset(64, size, 0, factors[world])  # warm-up
    # Rounds over every world in turn, keeping each one's best time: on a shared machine the
    # load changes over minutes, and interleaving exposes every world to it alike.
    for _ in range(rounds):
        for world in worlds:
            start = time.perf_counter()
            render_dataset(count, size, 0, factors[world])
            per_image[world] = min(per_image[world], (time.perf_counter() - start) / count)
    first = worlds[0]
    print(f"| world | images/s at {size} px (one thread) | time per image / {first}'s |")
    print("|---|---|---|")
    for world in worlds:
        print(f"| {world} | {1 / per_image[world]:.0f} | {per_image[world] / per_image[first]:.2f} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default='cpu', choices=['auto', 'cpu', 'cuda'])
    parser.add_argument('--pairs', type=int, default=500, help='held-out pairs evaluated')
    parser.add_argument('--results', default=None, help='results folder (default: a temporary one)')
    parser.add_argument('--seed', type=int, default=0, help='seed of the GANgealing runs')
    parser.add_argument('--generator', default='synthetic', choices=['synthetic', 'stylegan2'],
                        help='stylegan2: align through the --ckpt of train_stylegan2.py')
    parser.add_argument('--ckpt', default=None, help='with --generator stylegan2: its checkpoint')
    parser.add_argument('--inject', type=int, default=4,
                        help="with --generator stylegan2: W+ entries [0, inject) take the target's pose")
    parser.add_argument('--no_handbuilt', action='store_true',
                        help='with --generator stylegan2: skip the hand-built generator run at its resolution')
    parser.add_argument('--worlds', default=None,
                        help=f'comma-separated worlds to train in, one run each ({", ".join(WORLDS)})')
    parser.add_argument('--jobs', type=int, default=1, help='runs at a time (with --worlds)')
    parser.add_argument('--render_speed', action='store_true',
                        help='only time the renderer in each --worlds world (default: default,photo)')
    args, extra = parser.parse_known_args()
    worlds = args.worlds.split(',') if args.worlds else None
    unknown = [w for w in worlds or () if w not in WORLDS]
    if unknown:
        parser.error(f'unknown world(s) {", ".join(unknown)}; choose from {", ".join(WORLDS)}')
    if worlds and args.generator == 'stylegan2' and not args.render_speed:
        parser.error('--worlds trains the hand-built generator; give the learned one its world with the '
                     'synthetic flags')
    if args.jobs < 1:
        parser.error(f'--jobs must be at least 1, got {args.jobs}')
    if args.render_speed:
        render_speed(worlds or ['default', 'photo'])
        return

    results = args.results or tempfile.mkdtemp(prefix='bench_synthetic_')
    os.makedirs(results, exist_ok=True)
    rows = []
    if worlds and args.generator == 'synthetic':
        rows = run_many([(f'hand-built, {w}', f'bench_{w}', WORLDS[w] + extra) for w in worlds], results, args)
    elif args.generator == 'stylegan2':
        if not args.ckpt:
            parser.error('--generator stylegan2 needs --ckpt (a train_stylegan2.py checkpoint)')
        flags, size = stylegan2_flags(args.ckpt, args.inject)
        rows.append(('StyleGAN2 (learned)', *run('bench_stylegan2', flags + extra, results, args)))
        if not args.no_handbuilt:
            size_flags = ['--gen_size', str(size), '--real_size', str(size), '--flow_size', str(min(32, size))]
            rows.append(('hand-built', *run('bench_synthetic', size_flags + extra, results, args)))
    else:
        rows.append(('hand-built', *run('bench_synthetic', extra, results, args)))

    print()
    print("| generator | pairs | PCK@0.1 | baseline@0.1 | PCK@0.05 | baseline@0.05 | wall time |")
    print("|---|---|---|---|---|---|---|")
    for name, report, wall in rows:
        pck, base = report['pck'], report['identity_baseline']
        print(f"| {name} | {report['pairs']} | {pck['0.1']:.3f} | {base['0.1']:.3f} | {pck['0.05']:.3f} | "
              f"{base['0.05']:.3f} | {wall / 60:.1f} min |")


if __name__ == '__main__':
    main()
