import math

import pytest
import torch

from utils.schedules import DecayingCosineAnnealingWarmRestarts, anneal_psi, cycle_position, zero_lr_iterations


def lr_at(step, base_lr, period, t_mult, decay):
    """The schedule's closed form, the reference the scheduler is held to: at ``step``
    iterations into the schedule, lr = decay**n * base_lr * (1 + cos(pi * t / T_n)) / 2
    with n the cycle holding ``step``, t the position in it and T_n = period * t_mult**n."""
    n, t_cur, t_i = cycle_position(step, period, t_mult)
    return base_lr * decay ** n * (1.0 + math.cos(math.pi * t_cur / t_i)) / 2.0


def is_period_end(step, period, t_mult):
    """Whether ``step`` is the last step of a cycle (the next one starts a new cycle)."""
    return step >= 0 and cycle_position(step + 1, period, t_mult)[1] == 0


def make_optimizer(lr=0.01):
    return torch.optim.Adam([torch.nn.Parameter(torch.zeros(3))], lr=lr)


@pytest.mark.parametrize('i', [1, 37, 50, 99])
def test_cosine_psi_follows_half_cosine(i):
    assert anneal_psi(i, 100, 'cosine') == pytest.approx(0.5 * (1 + math.cos(math.pi * i / 100)))


@pytest.mark.parametrize('i', [1, 25, 60])
def test_linear_psi_is_a_ramp(i):
    assert anneal_psi(i, 100, 'linear') == pytest.approx(1 - i / 100)


@pytest.mark.parametrize('fn', ['cosine', 'linear'])
def test_psi_starts_at_one_and_stays_zero_after_annealing(fn):
    assert anneal_psi(0, 100, fn) == 1.0
    assert anneal_psi(50, 100, fn) == pytest.approx(0.5)
    assert anneal_psi(100, 100, fn) == 0.0
    assert anneal_psi(5000, 100, fn) == 0.0
    values = [anneal_psi(i, 100, fn) for i in range(0, 101)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_psi_without_annealing_is_zero_and_unknown_function_rejected():
    assert anneal_psi(0, 0) == 0.0
    with pytest.raises(ValueError, match='cosine'):
        anneal_psi(3, 10, 'exponential')


def test_cycle_position_at_restart_points():
    # period 10, t_mult 2: cycles [0, 10), [10, 30), [30, 70)
    assert cycle_position(0, 10, 2) == (0, 0, 10)
    assert cycle_position(9, 10, 2) == (0, 9, 10)
    assert cycle_position(10, 10, 2) == (1, 0, 20)
    assert cycle_position(29, 10, 2) == (1, 19, 20)
    assert cycle_position(30, 10, 2) == (2, 0, 40)
    assert cycle_position(25, 10, 1) == (2, 5, 10)


def test_lr_at_formula_with_decay_at_restarts():
    base, period, tm, decay = 0.01, 10, 2, 0.9
    assert lr_at(0, base, period, tm, decay) == pytest.approx(base)
    assert lr_at(5, base, period, tm, decay) == pytest.approx(base * 0.5)
    assert lr_at(9, base, period, tm, decay) == pytest.approx(base * (1 + math.cos(math.pi * 0.9)) / 2)
    assert lr_at(10, base, period, tm, decay) == pytest.approx(base * decay)  # first restart, decayed peak
    assert lr_at(20, base, period, tm, decay) == pytest.approx(base * decay * 0.5)  # middle of the 20-long cycle
    assert lr_at(30, base, period, tm, decay) == pytest.approx(base * decay ** 2)
    assert lr_at(40, base, period, tm, decay) == pytest.approx(base * decay ** 2 * (1 + math.cos(math.pi / 4)) / 2)


def test_period_ends_are_the_steps_before_restarts():
    ends = [s for s in range(0, 80) if is_period_end(s, 10, 2)]
    assert ends == [9, 29, 69]
    assert [s for s in range(0, 35) if is_period_end(s, 10, 1)] == [9, 19, 29]
    for s in ends:  # the learning rate is at its smallest there, and jumps up right after
        assert lr_at(s, 1.0, 10, 2, 1.0) < 0.03
        assert lr_at(s + 1, 1.0, 10, 2, 1.0) == pytest.approx(1.0)


def test_zero_lr_iterations_cover_annealing_end_and_period_ends():
    assert zero_lr_iterations(100, 10, 200, 2) == [99, 109, 129, 169]
    assert zero_lr_iterations(100, 10, 168, 2) == [99, 109, 129]
    for i in zero_lr_iterations(100, 10, 200, 2)[1:]:
        assert is_period_end(i - 100, 10, 2)


@pytest.mark.parametrize('t0_in_periods', [True, False])
def test_scheduler_matches_lr_at(t0_in_periods):
    period, tm, decay, base = 8, 2, 0.5, 0.1
    opt = make_optimizer(base)
    if t0_in_periods:  # how the trainer drives it: absolute, fractional positions in periods
        sched = DecayingCosineAnnealingWarmRestarts(opt, T_0=1, T_mult=tm, decay=decay)
    else:
        sched = DecayingCosineAnnealingWarmRestarts(opt, T_0=period, T_mult=tm, decay=decay)
    assert sched.get_last_lr()[0] == pytest.approx(base)
    for step in range(1, 60):
        if t0_in_periods:
            sched.step(step / period)
        else:
            sched.step()
        expected = lr_at(step, base, period, tm, decay)
        assert opt.param_groups[0]['lr'] == pytest.approx(expected, abs=1e-12)
        assert sched.get_last_lr()[0] == pytest.approx(expected, abs=1e-12)


def test_scheduler_state_round_trip(tmp_path):
    opt = make_optimizer(0.02)
    sched = DecayingCosineAnnealingWarmRestarts(opt, T_0=1, T_mult=2, decay=0.9)
    for step in range(1, 27):
        sched.step(step / 7)
    path = tmp_path / 'sched.pt'
    torch.save(sched.state_dict(), path)

    opt2 = make_optimizer(0.02)
    restored = DecayingCosineAnnealingWarmRestarts(opt2, T_0=1, T_mult=1, decay=1.0)
    restored.load_state_dict(torch.load(path, weights_only=True))
    assert (restored.T_0, restored.T_mult, restored.decay) == (1, 2, 0.9)
    assert restored.last_epoch == pytest.approx(26 / 7)
    assert restored.get_last_lr() == pytest.approx(sched.get_last_lr())
    for step in range(27, 40):
        sched.step(step / 7)
        restored.step(step / 7)
        assert restored.get_last_lr()[0] == pytest.approx(sched.get_last_lr()[0])


def test_scheduler_loads_original_format_state():
    # The original scheduler stores the floored epoch plus the cycle length and offset.
    position = 4.25  # periods: cycle 2 ([3, 7)) with t_mult 2, 1.25 into it
    original_state = {'T_0': 1, 'T_i': 4, 'T_mult': 2, 'eta_min': 0, 'decay': 0.9, 'cur_decay': 0.81,
                      'base_lrs': [0.001], 'last_epoch': 4, 'T_cur': 1.25, '_step_count': 10,
                      '_last_lr': [0.0005], '_get_lr_called_within_step': False, 'verbose': False}
    sched = DecayingCosineAnnealingWarmRestarts(make_optimizer(0.001), T_0=1, T_mult=2, decay=0.9)
    sched.load_state_dict(original_state)
    assert sched.last_epoch == pytest.approx(position)
    sched.step(4.5)
    assert sched.get_last_lr()[0] == pytest.approx(lr_at(4.5, 0.001, 1, 2, 0.9))
