"""The bookkeeping every trainer shares: one protocol for train.py, train_stylegan2.py and
train_cluster_classifier.py.

Each trainer keeps its own loop body (the step, what it logs, what it shows);
around it this module does the rest the same way for all three:

- progress on standard error (``utils.progress.Progress``);
- when to save, show and log (``--ckpt_every``, ``--vis_every``, ``--log_every``,
  plus the trainer's own checkpoint iterations and the last one);
- non-finite losses, gradients or weights, and stop signals, decided by every rank
  together with one collective (``training.checks.agree``), so no rank leaves while
  another waits in the next all-reduce;
- every rank's RNG state in each checkpoint (exact resume under torchrun);
- a checkpoint that cannot be written as one error line naming the last good one;
- SIGTERM / SIGINT at any moment: during training the current iteration is
  saved first; the program prints what was saved and exits with 128 + the signal.

    def main():
        run_until_stopped(train)

    def train(stop):
        ...
        loop = TrainingLoop(stop, device, start_iter, opt.iter, ckpt_dir, content, every=..., advice=...)
        for i in loop.iterations():
            terms = step(...)
            loop.track(terms.total, modules)
            check = loop.check(i, {'loss': terms.total})
            if check is None:
                continue
            loop.describe(i, f"loss {check.values['loss']:.4f}")
            if check.log: ...
            if check.show:
                with loop.showing(check):
                    visuals(...)
        loop.close()
"""
import contextlib
import os
from dataclasses import dataclass, field

import torch

from training.checks import ASYNC_CHECK_EVERY, agree, nonfinite_error, nonfinite_flags
from training.state import get_rng_state
from utils.checkpoint import checkpoint_name, save_checkpoint
from utils.distributed import cleanup, gather_objects, is_main_process
from utils.errors import UserError
from utils.progress import Progress
from utils.stop_signals import Interrupted, StopRequested


def run_until_stopped(train, *args):
    """Run ``train(stop, *args)`` under a ``StopRequested``; a stop signal ends the
    program with one line saying what was saved and the exit status 128 + signal."""
    with StopRequested() as stop:
        try:
            return train(stop, *args)
        except Interrupted as e:
            if is_main_process():
                print(f'\nStopped by signal {e.signum} {e.detail}'.rstrip(), flush=True)
            cleanup()
            raise SystemExit(128 + e.signum) from None


@contextlib.contextmanager
def start_up_section(stop):
    """Start-up (options, models, data): a stop signal aborts it at once, nothing saved."""
    with stop.interruptible():
        try:
            yield
        except Interrupted as e:
            e.detail = 'during start-up, before training; nothing was saved'
            raise


@dataclass
class Every:
    """Intervals, in iterations, of checkpoints, visuals and logged scalars.

    ``checkpoints``: further iterations that get a checkpoint (and logged scalars),
    e.g. where a cosine schedule reaches zero.
    """
    ckpt: int
    vis: int
    log: int
    checkpoints: frozenset = field(default_factory=frozenset)


@dataclass
class Check:
    """What a checked iteration decided: the rank-averaged loss values, and what is due."""
    iteration: int
    values: dict
    log: bool
    show: bool
    saved: bool
    rng_states: list = None


class TrainingLoop:
    """Iterations ``start_iter + 1 .. total`` with the shared bookkeeping.

    Args:
        stop: the active ``utils.stop_signals.StopRequested``.
        device: the training device (on CPU the collective check runs every
            iteration; on an asynchronous device every ``ASYNC_CHECK_EVERY``).
        start_iter: iterations already done (a resumed run).
        total: the last iteration.
        ckpt_dir: where checkpoints ``NNNNNNN.pt`` go (main process only).
        content: ``content(iteration, rng_states) -> dict`` of a checkpoint;
            ``rng_states`` is every rank's RNG state, in rank order.
        every: an ``Every``.
        advice: one sentence for a non-finite value (what to try).
        last_good: the checkpoint the run started from, if any.
    """

    def __init__(self, stop, device, start_iter, total, ckpt_dir, content, every, advice, last_good=None):
        self.stop, self.device = stop, device
        self.start_iter, self.total, self.ckpt_dir = start_iter, total, ckpt_dir
        self.content, self.every, self.advice = content, every, advice
        self.last_good = last_good
        self.check_every = 1 if device.type == 'cpu' else ASYNC_CHECK_EVERY
        self.progress = Progress(start_iter, total, enabled=is_main_process())
        self.health = torch.zeros(3, device=device)
        self.last_check = start_iter

    def iterations(self):
        """The iteration numbers still to run."""
        return range(self.start_iter + 1, self.total + 1)

    def track(self, loss, modules):
        """Fold this iteration's non-finite flags (loss, gradients, weights of
        ``modules``) into those checked at the next check; no host synchronisation."""
        self.health = torch.maximum(self.health, nonfinite_flags(loss, modules))

    def check(self, i, losses):
        """After iteration ``i``'s step: decide, with every rank, what happens now.

        Args:
            losses: {name: scalar tensor} of this rank (averaged over ranks in the result).
        Returns:
            None when nothing is due at ``i`` (the progress count moves on), else a
            ``Check``. The checkpoint of ``i`` is already written when one was due.
        Raises:
            UserError: a non-finite value on any rank (nothing saved for it).
            Interrupted: a stop signal on any rank (after saving iteration ``i``).
        """
        every = self.every
        due_save = i % every.ckpt == 0 or i in every.checkpoints or i == self.total
        show = i % every.vis == 0 or i == self.total
        log = i % every.log == 0 or i in every.checkpoints
        if not (due_save or show or log or i % self.check_every == 0):
            self.progress.update(i)
            return None
        # Every rank reaches this point at the same iterations: one collective decides for all.
        names = list(losses)
        stacked = torch.stack([losses[name].detach().float().reshape(()) for name in names])
        bad, signal_number, values = agree(self.health, self.stop.signal or 0, stacked)
        if any(bad):
            self.progress.close()
            raise nonfinite_error(bad, i, self.last_check, self.last_good, self.advice)
        self.last_check = i
        check = Check(i, dict(zip(names, values)), log, show, due_save)
        if not (due_save or show or signal_number):
            return check
        check.rng_states = gather_objects(get_rng_state())  # collective: the same iterations on every rank
        if due_save or signal_number:
            self.save(i, check.rng_states)
        if signal_number:
            self.progress.close()
            raise Interrupted(signal_number, f'at iteration {i}; checkpoint saved in {self.ckpt_dir}')
        return check

    def describe(self, i, text):
        """Show iteration ``i`` as done, with ``text`` (the losses) beside it."""
        self.progress.update(i, text)

    @property
    def rate(self):
        """Iterations per second so far."""
        return self.progress.rate

    @contextlib.contextmanager
    def showing(self, check, what='visuals'):
        """A section a stop signal may abort (visuals, samples): iteration
        ``check.iteration`` is saved first if it was not, then the signal ends the run."""
        try:
            with self.stop.interruptible():
                yield
        except Interrupted as e:
            if not check.saved:
                self.save(check.iteration, check.rng_states)
            self.progress.close()
            e.detail = f'at iteration {check.iteration} (during the {what}); checkpoint saved in {self.ckpt_dir}'
            raise

    def save(self, iteration, rng_states):
        """Write the checkpoint of ``iteration`` (main process only), atomically;
        a failed write is one error line naming the last good checkpoint."""
        if not is_main_process():
            return
        path = os.path.join(self.ckpt_dir, checkpoint_name(iteration))
        try:
            save_checkpoint(self.content(iteration, rng_states), path)
        except OSError as e:
            self.progress.close()
            raise UserError(f'cannot write the checkpoint {path}: {e.strerror or e}; training stopped at '
                            f'iteration {iteration}. The previous checkpoint ({self.last_good or "none yet"}) is '
                            f'intact: free space (or choose another --results) and continue with --resume') \
                from None
        self.last_good = path

    def close(self):
        self.progress.close()

