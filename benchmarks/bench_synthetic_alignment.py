"""Quality benchmark of the embedded default.

Trains ``python train.py`` at the synthetic-world defaults (CPU unless told
otherwise), then reports PCK-Transfer@0.1/0.05 on 500 held-out rendered pairs
next to the identity (no-alignment) baseline, and the wall time.

    python -m benchmarks.bench_synthetic_alignment [--device cpu] [extra train.py flags]

Target: PCK-Transfer@0.1 >= 0.90 and >= 0.40 above the baseline within 10 CPU
minutes on 2 cores.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default='cpu', choices=['auto', 'cpu', 'cuda'])
    parser.add_argument('--pairs', type=int, default=500, help='held-out pairs evaluated')
    parser.add_argument('--results', default=None, help='results folder (default: a temporary one)')
    args, extra = parser.parse_known_args()

    results = args.results or tempfile.mkdtemp(prefix='bench_synthetic_')
    command = [sys.executable, 'train.py', '--exp-name', 'bench_synthetic', '--results', results,
               '--device', args.device, '--synthetic_eval_images', str(2 * args.pairs)] + extra
    print('running:', ' '.join(command), flush=True)
    start = time.time()
    subprocess.run(command, cwd=ROOT, check=True)
    wall = time.time() - start

    with open(os.path.join(results, 'bench_synthetic', 'pck.json')) as f:
        report = json.load(f)
    print()
    print("| pairs | PCK@0.1 | baseline@0.1 | PCK@0.05 | baseline@0.05 | wall time |")
    print("|---|---|---|---|---|---|")
    pck, base = report['pck'], report['identity_baseline']
    print(f"| {report['pairs']} | {pck['0.1']:.3f} | {base['0.1']:.3f} | {pck['0.05']:.3f} | "
          f"{base['0.05']:.3f} | {wall / 60:.1f} min |")


if __name__ == '__main__':
    main()
