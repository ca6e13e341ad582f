"""train.py: starting from checkpoints (resume, original-style, generator only) and stopping on SIGTERM."""
import argparse
import os
import re
import signal
import time

import pytest
import torch

from models.stylegan2 import Generator
from training.building import load_optimizer_state
from utils.checkpoint import load_checkpoint, save_checkpoint
from utils.schedules import zero_lr_iterations

pytestmark = pytest.mark.usefixtures('one_thread')

NEW_KEYS = ('iteration', 'rng_state', 'format_version')
END = 15  # iterations of the runs compared after a kill -9


def _synthetic(tiny_configs, results, name, iterations, *extra):
    # psi reaches 0 at iteration 3; the first learning-rate minimum is iteration 5.
    return tiny_configs.synthetic + ['--exp-name', name, '--results', str(results), '--iter', str(iterations),
                                     '--anneal_psi', '3', '--period', '3', '--log_every', '1', *map(str, extra)]


def _ckpt_path(results, name, iteration):
    return os.path.join(str(results), name, 'checkpoints', f'{iteration:07d}.pt')


@pytest.fixture(scope='module')
def three_iterations(tmp_path_factory, train_in_process, tiny_configs):
    """A synthetic run of 3 iterations (its last checkpoint is 0000003.pt)."""
    results = tmp_path_factory.mktemp('results')
    result = train_in_process(_synthetic(tiny_configs, results, 'first', 3))
    assert result.code == 0, result.stderr[-3000:]
    return results, _ckpt_path(results, 'first', 3)


def test_resuming_reproduces_the_next_iteration(three_iterations, train_in_process, tiny_configs, read_events):
    results, ckpt = three_iterations
    straight = train_in_process(_synthetic(tiny_configs, results, 'straight', 4))
    assert straight.code == 0, straight.stderr[-3000:]
    resumed = train_in_process(_synthetic(tiny_configs, results, 'resumed', 4, '--ckpt', ckpt))
    assert resumed.code == 0, resumed.stderr[-3000:]
    assert f'Resuming from {ckpt} at iteration 3' in resumed.stdout
    straight_events, resumed_events = read_events(results / 'straight'), read_events(results / 'resumed')
    first_events = read_events(results / 'first')
    for tag in ('Loss/reconstruction', 'Loss/total_variation', 'Loss/flow_identity'):
        # The two runs agree on the shared iterations (same seed, same process) ...
        assert first_events.scalars(tag) == pytest.approx({i: straight_events.scalars(tag)[i] for i in (1, 2, 3)})
        # ... and the resumed run's only iteration is the straight run's fourth.
        resumed_value = resumed_events.scalars(tag)
        assert list(resumed_value) == [4]
        assert resumed_value[4] == pytest.approx(straight_events.scalars(tag)[4], rel=1e-6, abs=1e-9), tag
    straight_ckpt = load_checkpoint(_ckpt_path(results, 'straight', 4))
    resumed_ckpt = load_checkpoint(_ckpt_path(results, 'resumed', 4))
    for key in ('t', 't_ema', 'll'):
        for name, value in straight_ckpt[key].items():
            torch.testing.assert_close(resumed_ckpt[key][name], value, rtol=1e-5, atol=1e-6, msg=f'{key}.{name}')


def test_original_style_checkpoint_resumes_at_the_iteration_in_its_name(three_iterations, tmp_path,
                                                                        train_in_process, tiny_configs,
                                                                        read_events):
    _, ckpt = three_iterations
    original = {key: value for key, value in load_checkpoint(ckpt).items() if key not in NEW_KEYS}
    path = str(tmp_path / 'downloaded' / '0000003.pt')
    save_checkpoint(original, path)
    result = train_in_process(_synthetic(tiny_configs, tmp_path, 'continued', 5, '--ckpt', path))
    assert result.code == 0, result.stderr[-3000:]
    assert f'Resuming from {path} at iteration 3' in result.stdout
    events = read_events(tmp_path / 'continued')
    assert sorted(events.scalars('Loss/reconstruction')) == [4, 5]
    assert events.scalars('Progress/psi') == {4: 0.0, 5: 0.0}
    assert sorted(os.listdir(tmp_path / 'continued' / 'checkpoints')) == ['0000005.pt']  # a zero-lr point and the end
    final = load_checkpoint(_ckpt_path(tmp_path, 'continued', 5))
    assert final['iteration'] == 5
    assert float(final['t_optim']['state'][0]['step']) == 5  # the optimiser's state carried on


def _rosinality_checkpoint(path, seed):
    """A StyleGAN2 training checkpoint as rosinality's trainer writes it (g, d, g_ema, args, ...)."""
    torch.manual_seed(seed)
    g_ema = Generator(16, 32, 2, channel_multiplier=1)
    state = {'g': g_ema.state_dict(), 'g_ema': g_ema.state_dict(),
             'd': {'convs.0.0.weight': torch.randn(16, 3, 1, 1), 'final_linear.1.bias': torch.zeros(1)},
             'g_optim': {'state': {}, 'param_groups': []}, 'd_optim': {'state': {}, 'param_groups': []},
             'args': argparse.Namespace(size=16, latent=32, n_mlp=2, channel_multiplier=1),
             'latent_avg': torch.randn(32)}
    save_checkpoint(state, path)
    return g_ema.state_dict()


def test_load_G_only_takes_the_generator_and_starts_fresh(tmp_path, train_in_process, tiny_configs, read_events):
    path = str(tmp_path / '550000.pt')
    weights = _rosinality_checkpoint(path, seed=123)
    argv = tiny_configs.stylegan2 + ['--exp-name', 'aligned', '--results', str(tmp_path), '--ckpt', path,
                                     '--load_G_only', '--iter', '2', '--log_every', '1']
    result = train_in_process(argv)
    assert result.code == 0, result.stderr[-3000:]
    assert 'Resuming' not in result.stdout
    assert sorted(read_events(tmp_path / 'aligned').scalars('Loss/reconstruction')) == [1, 2]
    final = load_checkpoint(_ckpt_path(tmp_path, 'aligned', 2))
    assert final['iteration'] == 2 and float(final['t_optim']['state'][0]['step']) == 2
    for name, value in weights.items():  # the checkpoint's generator, not a random one
        assert torch.equal(final['g_ema'][name], value), name
    torch.manual_seed(0)
    unrelated = Generator(16, 32, 2, channel_multiplier=1).state_dict()
    assert any(not torch.equal(unrelated[name], value) for name, value in weights.items())


def test_load_G_only_ignores_the_rest_of_a_gangealing_checkpoint(three_iterations, tmp_path, train_in_process,
                                                                  tiny_configs, read_events):
    _, ckpt = three_iterations
    result = train_in_process(_synthetic(tiny_configs, tmp_path, 'fresh', 1, '--ckpt', ckpt, '--load_G_only'))
    assert result.code == 0, result.stderr[-3000:]
    assert 'Resuming' not in result.stdout
    assert list(read_events(tmp_path / 'fresh').scalars('Loss/reconstruction')) == [1]
    final = load_checkpoint(_ckpt_path(tmp_path, 'fresh', 1))
    assert final['iteration'] == 1 and float(final['t_optim']['state'][0]['step']) == 1


def _wait_for(predicate, timeout, process):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.2)
    return False


def test_sigterm_stops_after_the_iteration_with_a_loadable_checkpoint(tmp_path, train_process, tiny_configs):
    # No checkpoint or visual is due in the first 1000 iterations: only the stop writes one.
    argv = _synthetic(tiny_configs, tmp_path, 'long', 100000, '--vis_every', 1000, '--ckpt_every', 1000,
                      '--anneal_psi', 1000, '--period', 1000)
    stdout_path, stderr_path = tmp_path / 'stdout.txt', tmp_path / 'stderr.txt'
    with open(stdout_path, 'w') as stdout, open(stderr_path, 'w') as stderr:
        process = train_process.start(argv, stdout=stdout, stderr=stderr)
        try:
            # The progress bar shows the losses once the first iteration is done.
            started = _wait_for(lambda: 'rec ' in stderr_path.read_text(), 180, process)
            assert started, f'no iteration finished: {stderr_path.read_text()[-3000:]}'
            process.send_signal(signal.SIGTERM)
            code = process.wait(timeout=120)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    output = stdout_path.read_text()
    assert code == 128 + signal.SIGTERM, stderr_path.read_text()[-3000:]
    match = re.search(r'Stopped by signal 15 at iteration (\d+)', output)
    assert match, output[-2000:]
    iteration = int(match.group(1))
    assert 1 <= iteration < 1000
    folder = tmp_path / 'long' / 'checkpoints'
    assert os.listdir(folder) == [f'{iteration:07d}.pt']  # no temporary file left behind
    ckpt = load_checkpoint(str(folder / f'{iteration:07d}.pt'))
    assert ckpt['iteration'] == iteration
    assert {'t', 't_ema', 'll', 't_optim', 'rng_state'} <= set(ckpt)
    assert float(ckpt['t_optim']['state'][0]['step']) == iteration


def test_optimizer_state_resumes_with_this_runs_kernel_choice():
    """A checkpoint's Adam moments are restored, its fused/foreach flags are not."""
    param = torch.nn.Parameter(torch.ones(3))
    written = torch.optim.Adam([param], lr=0.1, foreach=False)
    param.grad = torch.tensor([1.0, -2.0, 0.5])
    written.step()
    state = written.state_dict()
    resumed_param = torch.nn.Parameter(param.detach().clone())
    resumed = torch.optim.Adam([resumed_param], lr=0.5, foreach=True)
    load_optimizer_state(resumed, state)
    group = resumed.param_groups[0]
    assert group['foreach'] is True and group['lr'] == 0.1
    assert torch.equal(resumed.state[resumed_param]['exp_avg'], written.state[param]['exp_avg'])
    assert torch.equal(resumed.state[resumed_param]['exp_avg_sq'], written.state[param]['exp_avg_sq'])


def test_resume_after_kill_9_continues_at_the_last_checkpoint_exactly(tmp_path, train_process, train_in_process,
                                                                     tiny_configs, read_events):
    """kill -9 after the learning-rate schedule has started; a fresh process with only --resume continues."""
    # psi reaches 0 at iteration 2, so the schedule steps from iteration 3 on.
    def flags(name, iterations):
        return tiny_configs.synthetic + ['--exp-name', name, '--results', str(tmp_path), '--iter', str(iterations),
                                         '--anneal_psi', '2', '--period', '4', '--log_every', '1',
                                         '--ckpt_every', '3']
    straight = train_in_process(flags('straight', END))
    assert straight.code == 0, straight.stderr[-3000:]
    stdout, stderr = tmp_path / 'stdout.txt', tmp_path / 'stderr.txt'
    with open(stdout, 'w') as out, open(stderr, 'w') as err:
        process = train_process.start(flags('killed', 1000), stdout=out, stderr=err)
    first = tmp_path / 'killed' / 'checkpoints' / '0000003.pt'
    try:
        assert _wait_for(first.exists, 180, process), stderr.read_text()[-3000:]
        process.kill()  # SIGKILL: no handler runs, whatever it was doing is cut short
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    newest = max(int(name[:7]) for name in os.listdir(first.parent) if name.endswith('.pt') and name[0] != '.')
    # Checkpoints fall every 3 iterations and where the learning rate reaches 0 (iterations 1, 5, 13).
    saved_at = set(range(3, END + 1, 3)) | set(zero_lr_iterations(2, 4, END, 2))
    assert newest in saved_at and newest < END, newest
    # Only the experiment's name, --resume and the end: everything else comes from the checkpoint.
    resumed = train_in_process(['--exp-name', 'killed', '--results', str(tmp_path), '--resume', '--iter', str(END),
                                '--device', 'cpu'])
    assert resumed.code == 0, resumed.stderr[-3000:]
    assert f'Resuming from {_ckpt_path(tmp_path, "killed", newest)} at iteration {newest}' in resumed.stdout
    expected, got = read_events(tmp_path / 'straight'), read_events(tmp_path / 'killed', single=False)
    for tag in ('Loss/reconstruction', 'Loss/total_variation', 'Progress/STN_LearningRate'):
        want, have = expected.scalars(tag), got.scalars(tag)
        assert sorted(have) == list(range(1, END + 1)), tag  # the killed run's extra steps are purged
        for i in range(1, END + 1):
            assert have[i] == pytest.approx(want[i], rel=1e-6, abs=1e-9), (tag, i)
    final = load_checkpoint(_ckpt_path(tmp_path, 'killed', END))
    reference = load_checkpoint(_ckpt_path(tmp_path, 'straight', END))
    for key in ('t', 't_ema', 'll'):
        for name, value in reference[key].items():
            torch.testing.assert_close(final[key][name], value, rtol=1e-5, atol=1e-6, msg=f'{key}.{name}')
