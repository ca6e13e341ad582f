"""Training schedules: psi annealing and a cosine learning rate with decaying warm restarts.

Two clocks run during training:

* psi (how far the congealing target is from the sample itself) goes from 1 to
  0 over the first ``anneal_iters`` iterations, then stays 0;
* once psi is 0, the learning rates follow cosine cycles. The first cycle is
  ``period`` iterations long, each next one ``t_mult`` times longer, and each
  restart's peak is the previous peak times ``decay``.

The scheduler's position may be fractional. The trainer counts it in periods
(``T_0=1`` and ``step((iteration - anneal_iters) / period)``), which keeps its
state dicts interchangeable with checkpoints of the original GANgealing code;
``T_0=period`` with one ``step()`` per iteration gives the same rates.
"""
import math

from torch.optim.lr_scheduler import LRScheduler

ANNEAL_FUNCTIONS = ('cosine', 'linear')


def anneal_psi(iteration, anneal_iters, fn='cosine'):
    """Truncation psi at ``iteration`` (a float in [0, 1]).

    Args:
        iteration: training iteration (the first one is 1); 0 or less gives 1.
        anneal_iters: iterations over which psi goes from 1 to 0; 0 or less
            means psi is 0 from the start.
        fn: 'cosine' (0.5 * (1 + cos(pi * t / T))) or 'linear' (1 - t / T).
    Returns:
        psi, 1 at the start, 0 at ``anneal_iters`` and after.
    """
    if fn not in ANNEAL_FUNCTIONS:
        raise ValueError(f"unknown psi annealing function '{fn}' (choose from {', '.join(ANNEAL_FUNCTIONS)})")
    if anneal_iters <= 0 or iteration >= anneal_iters:
        return 0.0
    if iteration <= 0:
        return 1.0
    progress = iteration / anneal_iters
    if fn == 'cosine':
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress


def cycle_position(position, first_period, t_mult):
    """Where ``position`` falls in the warm-restart cycles.

    Args:
        position: non-negative (possibly fractional) scheduler position.
        first_period: length of the first cycle (> 0).
        t_mult: each cycle is ``t_mult`` (>= 1) times longer than the one before.
    Returns:
        (cycle index n >= 0, position inside that cycle, that cycle's length).
    """
    if position < 0:
        raise ValueError(f'scheduler position must be non-negative, got {position}')
    if t_mult == 1:
        n = int(position // first_period)
        return n, position - n * first_period, first_period
    # A loop over cycles, not a logarithm: log() misplaces exact restart points by rounding.
    n, start, length = 0, 0, first_period
    while position >= start + length:
        start += length
        length *= t_mult
        n += 1
    return n, position - start, length


def _restart_points(period, t_mult):
    """Yields the steps at which a new cycle starts: period, period * (1 + t_mult), ..."""
    point, length = 0, period
    while True:
        point += length
        length *= t_mult
        yield point


def zero_lr_iterations(anneal_iters, period, total_iters, t_mult):
    """Training iterations at which to save a checkpoint because the learning
    rate is (about) zero: the last iteration before psi reaches 0
    (``anneal_iters - 1``, as the original recipe does) and the last iteration
    of every cosine cycle that ends by ``total_iters``.

    Iteration i is ``i - anneal_iters`` steps into the schedule.
    """
    iterations = [anneal_iters - 1] if 1 <= anneal_iters - 1 <= total_iters else []
    for point in _restart_points(period, t_mult):
        iteration = anneal_iters + point - 1
        if iteration > total_iters:
            break
        iterations.append(iteration)
    return iterations


class DecayingCosineAnnealingWarmRestarts(LRScheduler):
    """Cosine annealing with warm restarts whose peaks decay (SGDR with decay).

    Position p (``last_epoch``; may be fractional) falls in cycle n with
    position t inside a cycle of length T_n = T_0 * T_mult**n; each parameter
    group's rate is eta_min + (decay**n * base_lr - eta_min) * (1 + cos(pi t / T_n)) / 2.

    Args:
        optimizer: the wrapped optimizer; its current rates are the peaks.
        T_0: length of the first cycle, in scheduler positions.
        T_mult: each next cycle is this many times longer (>= 1).
        eta_min: the floor the rate anneals to.
        decay: factor applied to the peak at every restart.
        last_epoch: -1 to start fresh.

    ``step()`` advances the position by 1; ``step(p)`` jumps to position p
    (absolute, may be fractional, as the trainer does).
    """

    def __init__(self, optimizer, T_0, T_mult=1, eta_min=0.0, decay=1.0, last_epoch=-1):
        if T_0 <= 0:
            raise ValueError(f'T_0 must be positive, got {T_0}')
        if T_mult < 1:
            raise ValueError(f'T_mult must be at least 1, got {T_mult}')
        self.T_0 = T_0
        self.T_mult = T_mult
        self.eta_min = eta_min
        self.decay = decay
        super().__init__(optimizer, last_epoch)

    def _rates_at(self, position):
        n, t_cur, t_i = cycle_position(position, self.T_0, self.T_mult)
        cosine = (1.0 + math.cos(math.pi * t_cur / t_i)) / 2.0
        return [self.eta_min + (base_lr * self.decay ** n - self.eta_min) * cosine for base_lr in self.base_lrs]

    def get_lr(self):
        """Rates at the current position (use ``get_last_lr()`` to read them)."""
        return self._rates_at(max(self.last_epoch, 0))

    def step(self, epoch=None):
        """Move to position ``epoch`` (default: one past the current one) and set the rates."""
        if epoch is None:
            epoch = self.last_epoch + 1 if self.last_epoch >= 0 else 0
        if epoch < 0:
            raise ValueError(f'scheduler position must be non-negative, got {epoch}')
        self.last_epoch = epoch
        self._step_count = getattr(self, '_step_count', 0) + 1
        rates = self._rates_at(epoch)
        for group, lr in zip(self.optimizer.param_groups, rates):
            group['lr'] = lr
        self._last_lr = [group['lr'] for group in self.optimizer.param_groups]

    def state_dict(self):
        """The schedule's hyper-parameters, peaks and exact position (plain Python values)."""
        return {'T_0': self.T_0, 'T_mult': self.T_mult, 'eta_min': self.eta_min, 'decay': self.decay,
                'base_lrs': list(self.base_lrs), 'last_epoch': self.last_epoch,
                '_step_count': self._step_count, '_last_lr': list(self._last_lr)}

    def load_state_dict(self, state_dict):
        """Restore from ``state_dict()``, or from the original GANgealing
        scheduler's state (which stores a floored epoch plus ``T_i``/``T_cur``:
        the exact position is rebuilt from those)."""
        for key in ('T_0', 'T_mult', 'eta_min', 'decay', '_step_count'):
            if key in state_dict:
                setattr(self, key, state_dict[key])
        self.base_lrs = list(state_dict['base_lrs'])
        if 'T_cur' in state_dict and 'T_i' in state_dict:
            self.last_epoch = self._position_from_cycle(state_dict)
        else:
            self.last_epoch = state_dict['last_epoch']
        self._last_lr = list(state_dict.get('_last_lr') or self._rates_at(max(self.last_epoch, 0)))

    def _position_from_cycle(self, state):
        """Absolute position from an original-format state (cycle length and offset)."""
        t_cur, t_i = state['T_cur'], state['T_i']
        if t_cur < 0:  # never stepped past its construction
            return state['last_epoch']
        if self.T_mult == 1:
            # Cycles all have one length; the restart count is recorded in the decay applied so far.
            cur_decay = state.get('cur_decay', 1.0)
            n = round(math.log(cur_decay) / math.log(self.decay)) if 0 < self.decay < 1 and cur_decay > 0 else 0
            return n * self.T_0 + t_cur
        n = round(math.log(t_i / self.T_0, self.T_mult))
        start = self.T_0 * (self.T_mult ** n - 1) / (self.T_mult - 1)
        return start + t_cur
