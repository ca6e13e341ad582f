"""Run train.py's main() with a fault injected into one rank (for the multi-process tests).

    FAULT_RANK=1 FAULT_ITERATION=3 FAULT_SIGNAL=9 python tests/rank_fault.py <train.py flags>

Rank FAULT_RANK sends itself FAULT_SIGNAL at the start of its FAULT_ITERATION-th
training step of this process, on the first attempt only (torchrun's
TORCHELASTIC_RESTART_COUNT is 0 or unset), so a restarted job runs clean.
Only that rank receives the signal: the others must learn of it from the trainer.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import train  # noqa: E402  (after the path is set)


def _inject():
    rank, target = int(os.environ.get('RANK', '0')), int(os.environ['FAULT_RANK'])
    first_attempt = os.environ.get('TORCHELASTIC_RESTART_COUNT', '0') == '0'
    if rank != target or not first_attempt:
        return
    at, signum = int(os.environ['FAULT_ITERATION']), int(os.environ['FAULT_SIGNAL'])
    real_step, calls = train.training_step, []

    def training_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == at:
            print(f'rank {rank}: sending signal {signum} to itself', file=sys.stderr, flush=True)
            os.kill(os.getpid(), signum)
        return real_step(*args, **kwargs)
    train.training_step = training_step


if __name__ == '__main__':
    _inject()
    sys.argv = ['train.py', *sys.argv[1:]]
    train.main()
