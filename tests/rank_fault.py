"""Run train.py's main() with test hooks in one or every rank (for the multi-process tests).

    FAULT_RANK=1 FAULT_ITERATION=3 FAULT_SIGNAL=9 python tests/rank_fault.py <train.py flags>
    WEIGHTS_DIR=out python tests/rank_fault.py <train.py flags>

Rank FAULT_RANK sends itself FAULT_SIGNAL at the start of its FAULT_ITERATION-th
training step of this process, on the first attempt only (torchrun's
TORCHELASTIC_RESTART_COUNT is 0 or unset), so a restarted job runs clean; with
FAULT_MARKER=path, only while that file does not exist (it is created at the
fault): over several nodes, a restart need not count on every node, and ranks
may move between nodes.
Only that rank receives the signal: the others must learn of it from the trainer.
With WEIGHTS_DIR, every rank writes its final transformer, EMA transformer and
target coefficients to WEIGHTS_DIR/rank<R>.pt before the final evaluation.
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import train  # noqa: E402  (after the path is set)


def _inject():
    if 'FAULT_RANK' not in os.environ:
        return
    rank, target = int(os.environ.get('RANK', '0')), int(os.environ['FAULT_RANK'])
    marker = os.environ.get('FAULT_MARKER')
    first_attempt = (not os.path.exists(marker)) if marker else \
        os.environ.get('TORCHELASTIC_RESTART_COUNT', '0') == '0'
    if rank != target or not first_attempt:
        return
    at, signum = int(os.environ['FAULT_ITERATION']), int(os.environ['FAULT_SIGNAL'])
    real_step, calls = train.training_step, []

    def training_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == at:
            print(f'rank {rank}: sending signal {signum} to itself', file=sys.stderr, flush=True)
            if marker:
                open(marker, 'w').close()
            os.kill(os.getpid(), signum)
        return real_step(*args, **kwargs)
    train.training_step = training_step


def _record_weights():
    if 'WEIGHTS_DIR' not in os.environ:
        return
    path = os.path.join(os.environ['WEIGHTS_DIR'], f"rank{os.environ.get('RANK', '0')}.pt")
    real_run, real_evaluate = train.run_iterations, train.evaluate_alignment
    state = {}

    def run_iterations(opt, s, stop):
        state['s'] = s
        return real_run(opt, s, stop)

    def evaluate_alignment(opt, t_ema, writer, device, exp_dir):
        s = state['s']
        torch.save({'t': s.stn_module.state_dict(), 't_ema': t_ema.state_dict(), 'll': s.ll_module.state_dict()},
                   path)
        return real_evaluate(opt, t_ema, writer, device, exp_dir)
    train.run_iterations, train.evaluate_alignment = run_iterations, evaluate_alignment


if __name__ == '__main__':
    _inject()
    _record_weights()
    sys.argv = ['train.py', *sys.argv[1:]]
    train.main()
