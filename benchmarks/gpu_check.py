"""Validate and benchmark a CUDA machine in one command (scripts/gpu_check.sh; docs/gpu_check.md).

    bash scripts/gpu_check.sh                          # on a CUDA machine, at most 8 minutes
    bash scripts/gpu_check.sh --official ../gangealing # also against the original code
    python -m benchmarks.gpu_check --device cpu --config sg2-64 --sections ops training   # a CPU rehearsal

Sections (each a group of rows of one table):
  cuda_tests  build the fused ops and run tests/test_ops_cuda.py: the extension compiles, links and
              imports, and the kernels match the native ops in values and gradients for
              every dtype they are built for;
  ops         the fused ops against the native ones (benchmarks/bench_ops.py's cases), milliseconds;
  training    a training step at the released settings (StyleGAN2 256, channel multiplier 2, flow 128,
              batch 5, LPIPS on a random-weight VGG16) at fp32 and bf16 (and the original's with
              --official), alternating rounds in one process (benchmarks/bench_train.py);
  inference   the transformer's forward pass at the released settings (batch 5) at fp32 and bf16 (and
              the original's, with the generator's, with --official; benchmarks/bench_stn.py);
  ranks       with two or more GPUs: a few DDP iterations under torchrun with NCCL, then every rank
              must hold the same weights (benchmarks/rank_agreement.py).
Then '--precision auto' for this GPU model is decided from the training and inference rows
(utils.precision.decide_cuda_precision) and recorded (utils.precision.record_cuda_precision).

Every row has a status: ok, mismatch, error (the section failed to run), skipped or timing (a
measurement, no verdict). The exit status is 1 when any row is a mismatch or an error.
Without CUDA (and without --device cpu) it prints one line and exits 0.
"""
import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections import namedtuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECTIONS = ('cuda_tests', 'ops', 'training', 'inference', 'ranks')
FAILING = ('mismatch', 'error')

# Agreement tolerances: relative difference of first-step losses; largest absolute difference of warped
# images (inputs in [-1, 1]). Two precisions (or implementations) on the same weights and draws compute the
# same first step up to rounding: bf16 rounds activations to 8 mantissa bits, and CUDA's "fp32"
# convolutions round their inputs to TF32 (10 bits, torch's default for cuDNN) in both implementations, in
# different orders. The tolerances are far below what a wrong kernel, layout or warp produces (tenths).
LOSS_RTOL = {'fp32': 5e-3, 'bf16': 5e-2}
IMAGE_ATOL = {'fp32': 1e-2, 'bf16': 1e-1}

Row = namedtuple('Row', 'section check result status')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--official', default=None, metavar='PATH',
                        help='checkout of the original GANgealing code: time it beside ours (training, inference)')
    parser.add_argument('--device', default='cuda', choices=['cuda', 'cpu'],
                        help='cpu: rehearse the sections that can run without a GPU (slow at released settings; '
                             'pick a smaller --config)')
    parser.add_argument('--sections', nargs='+', default=list(SECTIONS), choices=SECTIONS)
    parser.add_argument('--config', default='sg2-256',
                        help="bench_train's configuration of the training section (default sg2-256: the released "
                             'settings)')
    parser.add_argument('--loss_fn', default='lpips', choices=['lpips', 'vgg_ssl'],
                        help='perceptual loss of the training section (random VGG16 weights)')
    parser.add_argument('--rounds', type=int, default=3, help='alternating timed rounds')
    parser.add_argument('--iters', type=int, default=None,
                        help='training steps per round (default: 10 on CUDA, 1 on the CPU)')
    parser.add_argument('--quick', action='store_true',
                        help="smaller op shapes (bench_ops --quick) and transformer batch 1: a rehearsal's sizes")
    parser.add_argument('--no-record', dest='record', action='store_false',
                        help="do not record this GPU's --precision auto choice")
    parser.add_argument('--json', default=None, help='also write the rows to this JSON file')
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------- verdicts (pure)

def relative_difference(a, b):
    return abs(a - b) / max(abs(a), abs(b), 1e-12)


def loss_agreement_row(section, label, reference, value, precision):
    """A row comparing a first-step loss with the reference's (tolerance LOSS_RTOL[precision])."""
    if not (_finite(reference) and _finite(value)):
        return Row(section, label, f'{value} vs {reference}: not finite', 'mismatch')
    difference = relative_difference(reference, value)
    status = 'ok' if difference <= LOSS_RTOL[precision] else 'mismatch'
    return Row(section, label, f'{value:.5f} vs {reference:.5f} (relative difference {difference:.1e}, '
                               f'tolerance {LOSS_RTOL[precision]:.0e})', status)


def image_agreement_row(section, label, difference, precision):
    """A row for the largest absolute difference of two outputs in [-1, 1] (tolerance IMAGE_ATOL)."""
    status = 'ok' if _finite(difference) and difference <= IMAGE_ATOL[precision] else 'mismatch'
    return Row(section, label, f'max |difference| {difference:.1e} (tolerance {IMAGE_ATOL[precision]:.0e})', status)


def rank_agreement_rows(result, expected_world_size):
    """Rows judging benchmarks/rank_agreement.py's JSON ``result``."""
    rows = []
    world = result.get('world_size')
    rows.append(Row('ranks', 'processes', f"{world} ({result.get('backend')}, {result.get('iters')} iterations)",
                    'ok' if world == expected_world_size else 'mismatch'))
    differences = result.get('max_difference_from_rank_0', [])
    same = len(differences) == world and all(d == 0 for d in differences)
    rows.append(Row('ranks', 'weights identical on every rank',
                    f"max difference from rank 0 {max(differences or [float('nan')]):.1e} over "
                    f"{result.get('weights')} values", 'ok' if same else 'mismatch'))
    losses = result.get('losses', [])
    # Each rank draws its own samples: identical losses would mean every rank trained on the same data.
    distinct = len({tuple(row) for row in losses}) == len(losses) == world
    finite = all(_finite(v) for row in losses for v in row)
    rows.append(Row('ranks', 'ranks draw their own samples', 'losses differ between ranks, all finite'
                    if distinct and finite else f'losses {losses}', 'ok' if distinct and finite else 'mismatch'))
    return rows


def pytest_rows(returncode, output):
    """Rows for a pytest run of tests/test_ops_cuda.py: its summary; on CUDA nothing may skip."""
    summary = next((line.strip('= ') for line in reversed(output.splitlines())
                    if re.search(r'\d+ (passed|failed|error|skipped)', line)), f'exit status {returncode}')
    rows = [Row('cuda_tests', 'tests/test_ops_cuda.py', summary, 'ok' if returncode == 0 else 'mismatch')]
    failed = re.findall(r'^(?:FAILED|ERROR) (\S+)', output, flags=re.MULTILINE)
    rows += [Row('cuda_tests', name.split('::')[-1], 'failed', 'mismatch') for name in failed]
    if returncode == 0 and 'skipped' in summary:
        rows.append(Row('cuda_tests', 'nothing skipped on a CUDA machine', summary, 'mismatch'))
    return rows


def format_table(rows):
    """The markdown table of every row."""
    lines = ['| section | check | result | status |', '|---|---|---|---|']
    lines += [f'| {r.section} | {r.check} | {r.result} | {r.status} |' for r in rows]
    return '\n'.join(lines)


def exit_status(rows):
    """1 when any row is a mismatch or an error, else 0."""
    return 1 if any(row.status in FAILING for row in rows) else 0


def _finite(value):
    return isinstance(value, (int, float)) and value == value and abs(value) != float('inf')


# ----------------------------------------------------------------------------- sections

def section_cuda_tests(args):
    """Build the fused ops for this GPU and run their tests in a child process."""
    env = dict(os.environ, GANGEALING_REQUIRE_CUDA_COMPILER='1')
    # The compile-only check is deselected: the link check compiles the same sources and more.
    proc = subprocess.run([sys.executable, '-m', 'pytest', 'tests/test_ops_cuda.py', '-q', '-rfE',
                           '-k', 'not test_cuda_sources_compile', '-p', 'no:cacheprovider'],
                          cwd=REPO, env=env, capture_output=True, text=True)
    output = proc.stdout + proc.stderr
    print(output[-3000:], flush=True)
    return pytest_rows(proc.returncode, output)


def section_ops(args):
    """Milliseconds per call of the native ops and (on CUDA) our kernels at bench_ops' shapes, forward and
    forward+backward, with the kernels' speed-up over native."""
    import torch
    from benchmarks import bench_ops
    device = torch.device(args.device)
    rows = []
    for dtype in (torch.float32, torch.bfloat16) if device.type == 'cuda' else (torch.float32,):
        timings = {}
        for name, shape, implementation, forward, both in bench_ops.bench_ops(device, dtype, 5, quick=args.quick):
            timings.setdefault(name, {})[implementation] = (forward, both)
        for name, by_impl in timings.items():
            native = by_impl['native']
            result = f'native {native[0]:.3f} / {native[1]:.3f} ms (forward / +backward)'
            if 'cuda' in by_impl:
                cuda = by_impl['cuda']
                result += (f'; cuda {cuda[0]:.3f} / {cuda[1]:.3f} ms, {native[0] / cuda[0]:.2f}x / '
                           f'{native[1] / cuda[1]:.2f}x faster')
            rows.append(Row('ops', f'{name}, {str(dtype)[6:]}', result, 'timing'))
    return rows


def _training_args(args):
    from benchmarks import bench_train
    argv = ['--configs', args.config, '--loss_fn', args.loss_fn, '--precision', 'fp32', 'bf16',
            '--rounds', str(args.rounds), '--iters', str(_iters(args))]
    if args.official:
        argv += ['--official', args.official]
    bench_args = bench_train.parse_args(argv)
    bench_train.ensure_perceptual_weights(bench_args)
    return bench_args


def _iters(args):
    return args.iters or (10 if args.device == 'cuda' else 1)


def section_training(args, measured):
    """The training step at fp32 and bf16 (and the original's) in alternating rounds; first losses agree."""
    from benchmarks import bench_train
    bench_args = _training_args(args)
    description = bench_train.CONFIGS[args.config][1]
    rows = []
    if args.official:
        result = bench_train.compare(args.config, bench_args, args.device)
        median, first = result['median'], result['first_loss']
        fp32, bf16 = median['ours'], median['ours bf16']
        rows.append(Row('training', f'{description}: original fp32', f"{median['original']:.4f} s / step; ours fp32 "
                        f"{median['original'] / fp32:.2f}x, ours bf16 {median['original'] / bf16:.2f}x", 'timing'))
        rows.append(loss_agreement_row('training', 'first loss: ours fp32 vs original', first['original'],
                                       first['ours'], 'fp32'))
        rows.append(loss_agreement_row('training', 'first loss: ours bf16 vs original', first['original'],
                                       first['ours bf16'], 'bf16'))
    else:
        result = bench_train.compare_variants(args.config, bench_args, args.device)
        (fp32, fp32_losses, _), (bf16, bf16_losses, _) = (result[label] for label in result)
        rows.append(loss_agreement_row('training', 'first loss: bf16 vs fp32', fp32_losses[0], bf16_losses[0],
                                       'bf16'))
    rows.insert(0, Row('training', f'{description}, {args.loss_fn}: fp32 / bf16',
                       f'{fp32:.4f} / {bf16:.4f} s per step (bf16 {fp32 / bf16:.2f}x)', 'timing'))
    measured['training_speedup'] = fp32 / bf16
    measured['training_seconds'] = {'fp32': fp32, 'bf16': bf16}
    measured['agree'] = measured.get('agree', True) and all(r.status == 'ok' for r in rows if r.status != 'timing')
    return rows


def released_stn(device):
    """The released transformer (similarity then flow, flow 128, 256-pixel inputs, channel multiplier 0.5)
    with small random last layers, so that its warps are not the identity."""
    import torch
    from models import get_stn
    torch.manual_seed(0)
    stn = get_stn(['similarity', 'flow'], flow_size=128, supersize=256, channel_multiplier=0.5).to(device).eval()
    with torch.no_grad():
        for name, parameter in stn.named_parameters():
            if 'warp_head' in name and not parameter.abs().sum():
                parameter.normal_(0, 0.01)
    return stn


def section_inference(args, measured):
    """The transformer's forward pass at fp32 and bf16 (alternating rounds); bf16's images agree."""
    import torch
    from benchmarks import bench_stn
    device = torch.device(args.device)
    batch = 1 if args.quick else 5
    rows = []
    if args.official:
        stn_args = bench_stn.parse_args(['--official', args.official, '--batches', str(batch), '--precision', 'bf16',
                                         '--rounds', str(args.rounds)])
        results = bench_stn.compare_with_official(stn_args, args.device)
        rates = {}
        for what, _, precision, ours, theirs, difference in results:
            rows.append(Row('inference', f'{what}, ours {precision} vs original',
                            f'{ours:.1f} vs {theirs:.1f} images / s ({ours / theirs:.2f}x)', 'timing'))
            if what.startswith('STN'):  # warped images in [-1, 1]; a random generator's output has no set scale
                rows.append(image_agreement_row('inference', f'{what}, ours {precision} vs original', difference,
                                                precision))
            else:
                rows[-1] = rows[-1]._replace(result=f'{rows[-1].result}, max |difference| {difference:.1e}')
            if what == 'STN forward':
                rates[precision] = ours
        speedup = rates['bf16'] / rates['fp32']
    else:
        stn = released_stn(device)
        torch.manual_seed(1)
        images = torch.rand(batch, 3, 256, 256, device=device) * 2 - 1

        def forward(precision):
            with torch.no_grad():
                return stn.set_precision(precision)(images)
        difference = (forward('bf16') - forward('fp32')).abs().max().item()
        rates = bench_stn.alternating({p: (lambda p=p: forward(p)) for p in ('fp32', 'bf16')}, batch,
                                      max(args.rounds, 3), device)
        speedup = rates['bf16'] / rates['fp32']
        rows.append(Row('inference', f'STN forward, batch {batch}: fp32 / bf16',
                        f"{rates['fp32']:.1f} / {rates['bf16']:.1f} images / s (bf16 {speedup:.2f}x)", 'timing'))
        rows.append(image_agreement_row('inference', 'STN forward: bf16 vs fp32', difference, 'bf16'))
    measured['inference_speedup'] = speedup
    measured['agree'] = measured.get('agree', True) and all(r.status == 'ok' for r in rows if r.status != 'timing')
    return rows


def section_ranks(args, gpus=None):
    """DDP under torchrun on every GPU (NCCL; gloo with --device cpu and two processes)."""
    import torch
    world = gpus if gpus is not None else (torch.cuda.device_count() if args.device == 'cuda' else 2)
    if world < 2:
        return [Row('ranks', 'DDP under torchrun', f'{world} GPU: needs two or more', 'skipped')]
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, 'ranks.json')
        command = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', str(world),
                   '--master_port', str(_free_port()), '-m', 'benchmarks.rank_agreement', '--out', out,
                   '--device', args.device]
        proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0 or not os.path.isfile(out):
            tail = [line for line in proc.stderr.splitlines() if line.strip()][-1:] or [f'exit {proc.returncode}']
            print(proc.stderr[-3000:], flush=True)
            return [Row('ranks', 'DDP under torchrun', tail[0][:300], 'error')]
        with open(out) as f:
            return rank_agreement_rows(json.load(f), world)


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def decision_rows(args, measured):
    """'--precision auto' for this GPU model from the measurements; recorded unless --no-record."""
    import torch
    from utils import precision
    if 'training_speedup' not in measured or 'inference_speedup' not in measured:
        return [Row('precision', '--precision auto', 'needs the training and inference sections', 'skipped')]
    supported = args.device == 'cuda' and torch.cuda.is_bf16_supported()
    choice = precision.decide_cuda_precision(measured['training_speedup'], measured['inference_speedup'],
                                             measured['agree'], supported)
    because = (f"bf16 training {measured['training_speedup']:.2f}x, inference {measured['inference_speedup']:.2f}x, "
               f"results {'agree' if measured['agree'] else 'differ'}, bf16 "
               f"{'supported' if supported else 'unsupported'}")
    where = 'not recorded'
    if args.device == 'cuda' and args.record:
        key = precision.cuda_device_key()
        where = 'recorded in ' + precision.record_cuda_precision(key, choice, {
            'training_speedup': measured['training_speedup'], 'inference_speedup': measured['inference_speedup'],
            'results_agree': measured['agree'], 'config': args.config, 'loss_fn': args.loss_fn,
            'measured': time.strftime('%Y-%m-%d %H:%M:%S')})
    return [Row('precision', '--precision auto on this GPU', f'{choice} ({because}); {where}', 'ok')]


def run_sections(args):
    """Every chosen section in order; a section that raises becomes one 'error' row."""
    measured = {}
    rows = []
    for name in args.sections:
        if name == 'cuda_tests' and args.device != 'cuda':
            rows.append(Row(name, 'CUDA tests', 'no GPU (--device cpu)', 'skipped'))
            continue
        start = time.perf_counter()
        print(f'# {name} ...', flush=True)
        try:
            if name in ('training', 'inference'):
                section_rows = globals()[f'section_{name}'](args, measured)
            else:
                section_rows = globals()[f'section_{name}'](args)
        except Exception as error:  # one section's failure must not hide the others' results
            message = (str(error).strip().splitlines() or [type(error).__name__])[-1]
            section_rows = [Row(name, 'run', f'{type(error).__name__}: {message[:300]}', 'error')]
        print(f'# {name}: {time.perf_counter() - start:.0f} s', flush=True)
        rows += section_rows
    rows += decision_rows(args, measured)
    return rows


def main(argv=None):
    args = parse_args(argv)
    import torch
    if args.device == 'cuda' and not torch.cuda.is_available():
        print('gpu_check: no CUDA GPU is visible to PyTorch; nothing to check on this machine')
        return 0
    if args.official:
        from benchmarks.official import load_official
        load_official(args.official)  # a path that is no checkout is refused now, in one line, not minutes later
    if args.device == 'cuda':
        header = (f'{torch.cuda.device_count()} x {torch.cuda.get_device_name()}, torch {torch.__version__}, '
                  f'CUDA {torch.version.cuda}')
    else:
        header = f'CPU rehearsal ({torch.get_num_threads()} threads), torch {torch.__version__}'
    start = time.perf_counter()
    rows = run_sections(args)
    print(f'\n## gpu_check: {header}; {time.perf_counter() - start:.0f} s\n')
    print(format_table(rows))
    status = exit_status(rows)
    if args.json:
        from utils.atomic_io import atomic_write
        atomic_write(args.json, lambda f: json.dump([row._asdict() for row in rows], f, indent=1), mode='w')
    print(f"\n{'FAILED' if status else 'passed'}: "
          f"{sum(row.status in FAILING for row in rows)} mismatch / error row(s)")
    return status


if __name__ == '__main__':
    sys.exit(main())
