"""Start-up time: launch of ``train.py --debug`` to its first training iteration.

    python -m benchmarks.bench_startup --threads 2
    python -m benchmarks.bench_startup --official ../gangealing --threads 2   # beside the original's start-up work

Ours: ``train.py --debug`` at bench_train's ``sg2-64`` configuration (random-weight
StyleGAN2 64 px, channel multiplier 2, flow 64, LPIPS with a random VGG16 trunk,
no real images), timed from launching the process to its first "iteration 1/"
progress line; the median of ``--runs`` launches. The original's trainer creates
CUDA tensors unconditionally and cannot start on a CPU, so with ``--official``
the same start-up work of its train.py (``--debug``, same configuration) is run
through its own functions in this process (``benchmarks.official.official_startup_work``):
without its process start, imports, file writing and PCA fit, a lower bound of
its start-up. Prints a markdown table.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

from utils.precision import PRECISIONS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def time_ours(args):
    """Seconds from launching train.py --debug to its first iteration line."""
    from benchmarks.bench_train import CONFIGS
    with tempfile.TemporaryDirectory(prefix='bench_startup_') as results:  # the killed run's files go with it
        command = [sys.executable, 'train.py', '--exp-name', 'startup', '--results', results, '--debug', '--device',
                   'cpu', '--iter', '2', '--loss_fn', 'lpips', '--perceptual_weights', args.perceptual_weights,
                   '--precision', args.precision, *CONFIGS['sg2-64'][0]]
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads)) if args.threads else None
        start = time.perf_counter()
        process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   env=env)
        seconds, tail = None, []
        for line in process.stdout:
            if line.startswith('iteration 1/'):
                seconds = time.perf_counter() - start
                break
            tail = (tail + [line])[-5:]
        process.kill()
        process.wait()
    if seconds is None:
        raise SystemExit('error: train.py ended before its first iteration:\n' + ''.join(tail))
    return seconds


def time_official(args):
    import torch
    from benchmarks.official import load_official, official_startup_work
    if args.threads:
        torch.set_num_threads(args.threads)
    official = load_official(args.official)
    torch.manual_seed(0)
    return official_startup_work(official, args.perceptual_weights, torch.device('cpu'))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--official', default=None, metavar='PATH', help='checkout of the original GANgealing code')
    parser.add_argument('--threads', type=int, default=None, help='CPU threads of both (default: torch decides)')
    parser.add_argument('--runs', type=int, default=3, help='timed launches (and original start-ups) each')
    parser.add_argument('--precision', default='auto', choices=PRECISIONS, help="train.py's --precision")
    args = parser.parse_args(argv)
    from benchmarks.bench_train import ensure_perceptual_weights
    args.loss_fn, args.perceptual_weights = 'lpips', None
    ensure_perceptual_weights(args)
    ours, theirs = [], []
    for run in range(args.runs):  # alternating, so that a shared machine's load falls on both alike
        ours.append(time_ours(args))
        if args.official:
            theirs.append(time_official(args))
        print(f'# run {run + 1}: ours {ours[-1]:.1f} s' + (f', original (lower bound) {theirs[-1]:.1f} s'
                                                         if theirs else ''), flush=True)
    print('\n| start-up (StyleGAN2 64 px, cm 2, flow 64, LPIPS, --debug) | seconds (median) | runs |')
    print('|---|---|---|')
    print(f'| ours: launch to the first iteration (--precision {args.precision}) | {statistics.median(ours):.1f} '
          f"| {', '.join(f'{s:.1f}' for s in ours)} |")
    if theirs:
        print(f'| original: its start-up work alone (lower bound) | {statistics.median(theirs):.1f} '
              f"| {', '.join(f'{s:.1f}' for s in theirs)} |")


if __name__ == '__main__':
    main()
