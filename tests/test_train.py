"""train.py end to end on tiny configurations: what a run logs, writes and learns.

One synthetic run through the real command line (a module fixture) serves
most tests; runs that need a different configuration go through ``train.main()``
in this process. See test_train_resume.py, test_train_errors.py and
test_train_distributed.py for the rest of the trainer's behaviour.
"""
import copy
import json
import math
import os
import re

import pytest
import torch
from torch import nn

from models.gangealing import resize_for_stn, sample_pairs
from models.losses import nearest_cluster, total_variation_loss
from models.perceptual import PERCEPTUAL_LOSSES
from tests.test_schedules import lr_at
from training.building import build_models, initialise_target
from training.state import CHECKPOINT_FORMAT_VERSION
from training.ema import EMA_DECAY, accumulate
from training.step import training_step
from utils.checkpoint import load_checkpoint
from utils.distributed import seed_everything
from options import parse_training_options
from utils.schedules import DecayingCosineAnnealingWarmRestarts, anneal_psi

pytestmark = pytest.mark.usefixtures('one_thread')

CHECKPOINT_KEYS = {'g_ema', 't', 't_ema', 't_optim', 't_sched', 'll', 'll_optim', 'll_sched', 'args',
                   'iteration', 'rng_state', 'format_version'}
SCALAR_TAGS = ('Loss/reconstruction', 'Loss/total_variation', 'Loss/flow_identity', 'Progress/psi',
               'Progress/STN_LearningRate', 'Progress/LL_LearningRate', 'Progress/iterations_per_second')
IMAGE_TAGS = ('sample', 'congealed_sample', 'target_sample', 'mean_congealed_sample', 'congealed_real',
              'mean_congealed_real', 'flow_real')

# The schedule of the module's synthetic run: psi reaches 0 at iteration 3; the
# cosine cycles are 3 then 6 iterations long, so the learning rate restarts
# (at half the previous peak) at iterations 6 and 12.
ITERATIONS, ANNEAL, PERIOD, T_MULT, DECAY = 12, 3, 3, 2, 0.5
VIS_EVERY = 5
STN_LR, LL_LR = 0.002, 0.02
RESTARTS = {ANNEAL + PERIOD: DECAY, ANNEAL + PERIOD + PERIOD * T_MULT: DECAY ** 2}


def _parameter_names(module):
    return [name for name, _ in module.named_parameters()]


def _initial_models(argv):
    """The models main() builds before its first step for these flags (same seeding)."""
    opt = parse_training_options(argv, save=False)
    seed_everything(opt.seed)
    return opt, build_models(opt, torch.device('cpu'))


def _max_difference(a, b, names):
    return max((a[name] - b[name]).abs().max().item() for name in names)


@pytest.fixture(scope='module')
def synthetic_run(tmp_path_factory, train_process, tiny_configs, read_events):
    results = tmp_path_factory.mktemp('results')
    argv = tiny_configs.synthetic + [
        '--exp-name', 'demo', '--results', str(results), '--iter', ITERATIONS, '--anneal_psi', ANNEAL,
        '--period', PERIOD, '--tm', T_MULT, '--decay', DECAY, '--stn_lr', STN_LR, '--ll_lr', LL_LR,
        '--log_every', 1, '--ckpt_every', 1, '--vis_every', VIS_EVERY]
    argv = [str(a) for a in argv]
    proc = train_process.run(argv)
    assert proc.returncode == 0, proc.stderr[-4000:]
    exp_dir = results / 'demo'
    return argv, exp_dir, read_events(exp_dir), proc


def _checkpoint(exp_dir, iteration):
    return load_checkpoint(str(exp_dir / 'checkpoints' / f'{iteration:07d}.pt'))


def test_accumulate_is_an_exponential_moving_average_of_the_trajectory():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ema = copy.deepcopy(model)
    decay = 0.8
    expected = [p.detach().clone() for p in model.parameters()]
    for step in range(5):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
            model[1].running_mean.add_(1.0)
        accumulate(ema, model, decay)
        expected = [decay * e + (1 - decay) * p.detach() for e, p in zip(expected, model.parameters())]
    for got, want, current in zip(ema.parameters(), expected, model.parameters()):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
        assert not torch.allclose(got, current)  # it lags behind the model
    assert torch.equal(ema[1].running_mean, model[1].running_mean)  # buffers are copied
    accumulate(ema, model, 0)  # decay 0: an exact copy (how training starts)
    for got, current in zip(ema.parameters(), model.parameters()):
        assert torch.equal(got, current)
    # 32 iterations per 10k halve the old weights' share: 0.5 after 10000 / 32 steps.
    assert EMA_DECAY ** (10000 / 32) == pytest.approx(0.5)


def test_run_logs_every_scalar_and_image_tag_and_writes_files(synthetic_run):
    _, exp_dir, events, proc = synthetic_run
    for tag in SCALAR_TAGS:
        assert sorted(events.scalars(tag)) == list(range(1, ITERATIONS + 1)), tag
    for name in ('Loss/reconstruction', 'Loss/total_variation', 'Loss/flow_identity'):
        values = events.scalars(name).values()
        assert all(math.isfinite(v) and v >= 0 for v in values), name
    assert events.scalars('Loss/reconstruction')[1] > 0
    pck = events.scalars('PCK/transfer@0.1')
    assert list(pck) == [ITERATIONS] and 0 <= pck[ITERATIONS] <= 1
    # Visuals at the start, every --vis_every iterations and at the end.
    visual_steps = [0, VIS_EVERY, 2 * VIS_EVERY, ITERATIONS]
    for tag in IMAGE_TAGS:
        assert events.image_steps(tag) == visual_steps, tag
        for step in visual_steps:
            assert (exp_dir / f'{tag}_{step:07d}.png').is_file(), (tag, step)
    from PIL import Image
    with Image.open(exp_dir / 'sample_0000000.png') as image:  # 4 samples of 32 px: a 2 x 2 grid
        assert image.size == (2 + 2 * 34, 2 + 2 * 34)
    options = json.loads((exp_dir / 'opt.json').read_text())['options']
    assert options['iter'] == ITERATIONS and options['exp_name'] == 'demo'
    assert 'stn_max_channels: 16' in (exp_dir / 'opt.txt').read_text()
    with open(exp_dir / 'pck.json') as f:
        assert json.load(f)['pck']['0.1'] == pytest.approx(pck[ITERATIONS], abs=1e-6)
    assert 'PCK-Transfer' in proc.stdout


def test_psi_and_learning_rates_follow_their_schedules(synthetic_run):
    _, _, events, _ = synthetic_run
    psi = events.scalars('Progress/psi')
    stn_lr = events.scalars('Progress/STN_LearningRate')
    ll_lr = events.scalars('Progress/LL_LearningRate')
    for i in range(1, ITERATIONS + 1):
        assert psi[i] == pytest.approx(anneal_psi(i, ANNEAL, 'cosine'), abs=1e-7), i
        step = max(0, i - ANNEAL)  # the learning-rate clock starts once psi is 0
        assert stn_lr[i] == pytest.approx(lr_at(step, STN_LR, PERIOD, T_MULT, DECAY), rel=1e-6, abs=1e-12), i
        assert ll_lr[i] == pytest.approx(lr_at(step, LL_LR, PERIOD, T_MULT, DECAY), rel=1e-6, abs=1e-12), i
    # The formulas' landmarks, written out: psi 1 -> 0 by a half cosine, then held at 0 ...
    assert psi[1] == pytest.approx(0.75) and psi[2] == pytest.approx(0.25)
    assert all(psi[i] == 0 for i in range(ANNEAL, ITERATIONS + 1))
    # ... the peak rate until psi is 0, a cosine down, and restarts at a decayed peak.
    assert all(stn_lr[i] == pytest.approx(STN_LR) for i in range(1, ANNEAL + 1))
    for iteration, factor in RESTARTS.items():
        assert stn_lr[iteration] == pytest.approx(STN_LR * factor, rel=1e-6)
        assert ll_lr[iteration] == pytest.approx(LL_LR * factor, rel=1e-6)
        assert stn_lr[iteration - 1] < stn_lr[iteration]
    assert stn_lr[ANNEAL + 1] == pytest.approx(STN_LR * (1 + math.cos(math.pi / PERIOD)) / 2, rel=1e-6)


def test_checkpoints_hold_every_key_and_reload_into_fresh_models(synthetic_run):
    argv, exp_dir, events, _ = synthetic_run
    saved = sorted(os.listdir(exp_dir / 'checkpoints'))
    assert saved == [f'{i:07d}.pt' for i in range(1, ITERATIONS + 1)]  # --ckpt_every 1, nothing else
    ckpt = _checkpoint(exp_dir, ITERATIONS)
    assert set(ckpt) == CHECKPOINT_KEYS
    assert ckpt['iteration'] == ITERATIONS and ckpt['format_version'] == CHECKPOINT_FORMAT_VERSION
    assert ckpt['args'].exp_name == 'demo' and ckpt['args'].iter == ITERATIONS
    assert isinstance(ckpt['rng_state']['torch'], torch.Tensor)
    opt, (generator, stn, t_ema, ll) = _initial_models(argv)
    generator.load_state_dict(ckpt['g_ema'])
    stn.load_state_dict(ckpt['t'])
    t_ema.load_state_dict(ckpt['t_ema'])
    ll.load_state_dict(ckpt['ll'])
    t_optim = torch.optim.Adam(stn.parameters(), lr=opt.stn_lr)
    t_optim.load_state_dict(ckpt['t_optim'])
    sched = DecayingCosineAnnealingWarmRestarts(t_optim, T_0=1, T_mult=opt.tm, decay=opt.decay)
    sched.load_state_dict(ckpt['t_sched'])
    assert sched.get_last_lr()[0] == pytest.approx(events.scalars('Progress/STN_LearningRate')[ITERATIONS])
    assert float(t_optim.state_dict()['state'][0]['step']) == ITERATIONS  # one Adam step per iteration
    with torch.no_grad():
        aligned = t_ema(torch.zeros(2, 3, 32, 32), output_resolution=16)
    assert aligned.shape == (2, 3, 16, 16) and torch.isfinite(aligned).all()


def test_training_moves_the_stn_and_target_and_the_ema_lags_by_the_decay(synthetic_run):
    argv, exp_dir, _, _ = synthetic_run
    _, (_, initial_stn, _, initial_ll) = _initial_models(argv)
    names = _parameter_names(initial_stn)
    initial = initial_stn.state_dict()
    ckpts = {i: _checkpoint(exp_dir, i) for i in range(1, ITERATIONS + 1)}
    decay = EMA_DECAY
    # t_ema starts as a copy of the initial STN and follows its trajectory by the decay.
    previous = initial
    for i in range(1, ITERATIONS + 1):
        t, t_ema = ckpts[i]['t'], ckpts[i]['t_ema']
        for name in names:
            expected = decay * previous[name] + (1 - decay) * t[name]
            torch.testing.assert_close(t_ema[name], expected, rtol=1e-5, atol=1e-7, msg=f'{name} at {i}')
        previous = t_ema
    final = ckpts[ITERATIONS]
    assert _max_difference(final['t'], initial, names) > 1e-4  # the STN learned
    ema_moved = _max_difference(final['t_ema'], initial, names)
    assert 0 < ema_moved < _max_difference(final['t'], initial, names)  # and its EMA lags behind
    assert _max_difference(final['t_ema'], final['t'], names) > 0
    # The target coefficients start at zero and receive gradients through the generator.
    assert torch.equal(initial_ll.coefficients, torch.zeros(1, 1))
    assert final['ll']['coefficients'].abs().max() > 0
    assert torch.equal(final['ll']['lat_mean'], ckpts[1]['ll']['lat_mean'])  # the PCA is fixed


def test_random_stylegan2_run_learns_with_linear_psi(tmp_path, train_in_process, tiny_configs, read_events):
    argv = tiny_configs.stylegan2 + ['--exp-name', 'sg2', '--results', str(tmp_path), '--iter', '3',
                                     '--anneal_psi', '4', '--anneal_fn', 'linear', '--log_every', '1']
    result = train_in_process(argv)
    assert result.code == 0, result.stderr[-3000:]
    exp_dir = tmp_path / 'sg2'
    events = read_events(exp_dir)
    for tag in ('Loss/reconstruction', 'Loss/total_variation', 'Loss/flow_identity'):
        assert all(math.isfinite(v) for v in events.scalars(tag).values()), tag
    assert events.scalars('Progress/psi') == pytest.approx({1: 0.75, 2: 0.5, 3: 0.25})
    # No real images with --dataset_mode lmdb and no --real_data_path: generated visuals only.
    assert 'sample' in events.tags['images'] and 'congealed_real' not in events.tags['images']
    assert not any(tag.startswith('PCK/') for tag in events.tags['scalars'])
    ckpt = load_checkpoint(str(exp_dir / 'checkpoints' / '0000003.pt'))
    _, (generator, stn, _, _) = _initial_models(argv)
    for name, value in generator.state_dict().items():  # the generator is frozen
        assert torch.equal(ckpt['g_ema'][name], value), name
    names = _parameter_names(stn)
    assert _max_difference(ckpt['t'], stn.state_dict(), names) > 1e-4
    assert _max_difference(ckpt['t_ema'], stn.state_dict(), names) > 0
    assert _max_difference(ckpt['t_ema'], ckpt['t'], names) > 0
    assert ckpt['ll']['coefficients'].abs().max() > 0
    assert ckpt['ll']['directions'].shape == (1, 32)


def test_clustering_with_flips_keeps_each_inputs_best_head_and_mirror(tiny_configs, tmp_path):
    heads, batch = 2, 3
    argv = tiny_configs.synthetic + tiny_configs.kmeans + ['--exp-name', 'clusters', '--results', str(tmp_path),
                                                           '--num_heads', str(heads), '--flips', '--batch', str(batch),
                                                           '--precision', 'fp32']  # compared with float32 below
    opt, (generator, stn, _, ll) = _initial_models(argv)
    loss_fn = PERCEPTUAL_LOSSES.get(opt.loss_fn).build(opt)
    initialise_target(opt, generator, ll, loss_fn, torch.device('cpu'))
    assert not torch.allclose(ll.coefficients[0], ll.coefficients[1])  # k-means++: distinct centroids
    psi = 0.3
    torch.manual_seed(11)
    terms = training_step(opt, generator, stn, ll, loss_fn, psi)
    # The same draw, scored pair by pair: input n, mirrored or not, against head k's target.
    torch.manual_seed(11)
    with torch.no_grad():
        x, y = sample_pairs(generator, ll, psi, batch, opt.flow_size)
        distances = torch.empty(batch, 2, heads)
        flows = {}
        for mirror, images in enumerate((x, x.flip(3))):
            aligned, flow = stn(resize_for_stn(images, opt.flow_size), return_flow=True, unfold=True,
                                output_resolution=opt.flow_size, padding_mode=opt.padding_mode,
                                input_img_for_sampling=images if opt.sample_from_full_res else None)
            assert aligned.shape == (batch, heads, 3, opt.flow_size, opt.flow_size)
            for n in range(batch):
                for k in range(heads):
                    distances[n, mirror, k] = loss_fn(aligned[n, k:k + 1], y[n * heads + k:n * heads + k + 1])
                    flows[n, mirror, k] = flow[n, k]
    best, choice = distances.view(batch, -1).min(1)
    assert terms.perceptual.item() == pytest.approx(best.mean().item(), rel=1e-5)
    chosen_flows = torch.stack([flows[n, int(c) // heads, int(c) % heads] for n, c in enumerate(choice)])
    assert terms.total_variation.item() == pytest.approx(total_variation_loss(chosen_flows).item(), rel=1e-4)
    # nearest_cluster reads the trainer's (mirror, image, head) layout the same way.
    layout = distances.permute(1, 0, 2).reshape(-1)
    values, indices = nearest_cluster(layout, batch, heads, flips=True)
    assert torch.equal(indices, choice) and torch.allclose(values, best)
    assert indices.shape == (batch,) and ((indices >= 0) & (indices < 2 * heads)).all()
    # Gradients reach both heads' targets only through the inputs that chose them.
    terms.total.backward()
    used_heads = set((choice % heads).tolist())
    for k in range(heads):
        assert (ll.coefficients.grad[k].abs().sum() > 0) == (k in used_heads)


def test_clustering_run_with_flips(tmp_path, train_in_process, tiny_configs, read_events):
    argv = tiny_configs.synthetic + tiny_configs.kmeans + ['--exp-name', 'clusters', '--results', str(tmp_path), '--num_heads', '2',
                                     '--flips', '--iter', '2', '--anneal_psi', '2', '--log_every', '1']
    result = train_in_process(argv)
    assert result.code == 0, result.stderr[-3000:]
    exp_dir = tmp_path / 'clusters'
    events = read_events(exp_dir)
    assert all(math.isfinite(v) for v in events.scalars('Loss/reconstruction').values())
    ckpt = load_checkpoint(str(exp_dir / 'checkpoints' / '0000002.pt'))
    assert ckpt['ll']['coefficients'].shape == (2, 1)
    # PCK-Transfer needs one template: a clustering run ends without it instead of failing.
    assert not (exp_dir / 'pck.json').exists()
    assert not any(tag.startswith('PCK/') for tag in events.tags['scalars'])
    from PIL import Image
    with Image.open(exp_dir / 'mean_congealed_sample_0000002.png') as image:  # one mean per head, side by side
        assert image.size == (2 + 2 * 18, 2 + 18)


# A world whose faces differ only in position: a 300-iteration run must learn to centre them.
# Settings chosen with --seed 0 (PCK-Transfer@0.1 0.263 against the baseline's 0.140); tested with seed 1.
EASY_WORLD = ['--synthetic_rotation', '0', '--synthetic_scale', '0.8', '0.8', '--synthetic_translation', '0.2',
              '--synthetic_no_appearance', '--synthetic_no_background', '--synthetic_no_mirror']


@pytest.mark.slow
def test_training_learns_to_align_beyond_the_no_alignment_baseline(tmp_path, train_in_process, tiny_configs,
                                                                   read_events):
    argv = tiny_configs.synthetic + EASY_WORLD + [
        '--exp-name', 'learn', '--results', str(tmp_path), '--seed', '1', '--transform', 'similarity',
        '--flow_size', '32', '--stn_max_channels', '32', '--batch', '8', '--iter', '300', '--anneal_psi', '20',
        '--period', '280', '--stn_lr', '0.003', '--log_every', '10', '--synthetic_eval_images', '200']
    result = train_in_process(argv)
    assert result.code == 0, result.stderr[-3000:]
    with open(tmp_path / 'learn' / 'pck.json') as f:
        pck = json.load(f)
    assert pck['pairs'] == 100
    # Measured: 0.257 against 0.140 (alpha 0.1).
    assert pck['pck']['0.1'] > pck['identity_baseline']['0.1'] + 0.06, pck
    reconstruction = read_events(tmp_path / 'learn').scalars('Loss/reconstruction')
    # Once psi is 0 the target is the learned template: the loss towards it falls (0.031 -> 0.015).
    early = sum(reconstruction[i] for i in (20, 30, 40, 50)) / 4
    late = sum(reconstruction[i] for i in (260, 270, 280, 290, 300)) / 5
    assert late < 0.7 * early, (early, late)


def test_checkpoints_load_with_weights_only_and_only_namespace_allowed(synthetic_run):
    import argparse
    _, exp_dir, _, _ = synthetic_run
    path = str(exp_dir / 'checkpoints' / f'{ITERATIONS:07d}.pt')
    with torch.serialization.safe_globals([argparse.Namespace]):
        ckpt = torch.load(path, weights_only=True)
    assert ckpt['format_version'] == CHECKPOINT_FORMAT_VERSION == 2
    rng = ckpt['rng_state']
    assert rng['torch'].dtype == torch.uint8
    assert rng['numpy']['keys'].shape == (624,) and rng['python']['internal'].shape == (625,)
    assert 'rank_rng_states' not in ckpt  # one process: rng_state is the whole story


def test_a_format_1_checkpoint_with_numpy_rng_state_still_resumes(synthetic_run, tmp_path, train_in_process,
                                                                  read_events):
    """Checkpoints written before the RNG states became tensors hold NumPy objects."""
    import random

    import numpy as np

    from utils.checkpoint import save_checkpoint
    argv, exp_dir, events, _ = synthetic_run
    new = _checkpoint(exp_dir, 4)
    rng = new['rng_state']
    numpy_state = (rng['numpy']['bit_generator'], rng['numpy']['keys'].numpy().astype(np.uint32),
                   rng['numpy']['pos'], rng['numpy']['has_gauss'], rng['numpy']['cached_gaussian'])
    python_state = (rng['python']['version'], tuple(rng['python']['internal'].tolist()), rng['python']['gauss_next'])
    old = dict(new, format_version=1, rng_state={'torch': rng['torch'], 'numpy': numpy_state,
                                                 'python': python_state})
    path = str(tmp_path / 'old' / '0000004.pt')
    save_checkpoint(old, path)
    saved_random = random.getstate()
    result = train_in_process(['--exp-name', 'old', '--results', str(tmp_path), '--ckpt', path, '--iter', '5',
                               '--device', 'cpu'])
    random.setstate(saved_random)
    assert result.code == 0, result.stderr[-3000:]
    assert f'Resuming from {path} at iteration 4' in result.stdout
    # Options came from the checkpoint (tiny sizes, the run's schedule), the loss is the original run's.
    resumed = load_checkpoint(str(tmp_path / 'old' / 'checkpoints' / '0000005.pt'))
    assert resumed['args'].gen_size == 32 and resumed['args'].period == PERIOD and resumed['format_version'] == 2
    value = read_events(tmp_path / 'old').scalars('Loss/reconstruction')
    assert value[5] == pytest.approx(events.scalars('Loss/reconstruction')[5], rel=1e-6)


def test_progress_is_plain_lines_when_standard_error_is_not_a_terminal(synthetic_run):
    _, exp_dir, _, proc = synthetic_run
    assert '\r' not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith('iteration ')]
    # The first iteration, then one line per 30 s, and the last: a short log, not one update per iteration.
    assert lines[0].startswith('iteration 1/12 (8%) | rec ') and lines[-1].startswith('iteration 12/12 (100%)')
    assert len(lines) < ITERATIONS
    assert re.search(r'\| [\d.]+ it/s \| \S+ left$', lines[0]), lines[0]
    # Where to look: at the start, the folder and TensorBoard; at the end, the outputs.
    assert f'tensorboard --logdir {exp_dir}' in proc.stdout
    end = proc.stdout.strip().splitlines()[-1]
    assert end.startswith('Done. Checkpoints: ') and str(exp_dir / 'checkpoints') in end
    assert str(exp_dir / 'pck.json') in end and 'image grids' in end


def test_resuming_takes_the_runs_options_unless_given(synthetic_run, tmp_path):
    _, exp_dir, _, _ = synthetic_run
    path = str(exp_dir / 'checkpoints' / '0000004.pt')
    # With --ckpt the generator default would be stylegan2 and the loss vgg_ssl; the checkpoint says otherwise.
    opt = parse_training_options(['--exp-name', 'again', '--results', str(tmp_path), '--ckpt', path], save=False)
    assert (opt.generator, opt.loss_fn, opt.dataset_mode) == ('synthetic', 'laplacian', 'synthetic')
    assert (opt.gen_size, opt.flow_size, opt.stn_max_channels, opt.iter, opt.stn_lr) == (32, 16, 16, ITERATIONS,
                                                                                         STN_LR)
    assert opt.exp_name == 'again' and opt.ckpt == path
    given = parse_training_options(['--exp-name', 'again', '--results', str(tmp_path), '--ckpt', path,
                                    '--iter', '20', '--stn_lr', '0.01'], save=False)
    assert (given.iter, given.stn_lr, given.gen_size) == (20, 0.01, 32)
    # --load_G_only starts afresh: the components' own defaults apply again.
    fresh = parse_training_options(['--exp-name', 'again', '--results', str(tmp_path), '--ckpt', path,
                                    '--load_G_only', '--generator', 'synthetic'], save=False)
    assert fresh.gen_size == 64 and fresh.iter == 2400
    # --resume in an experiment with checkpoints: the newest one, --ckpt only described the first start.
    resumed = parse_training_options(['--exp-name', 'demo', '--results', str(exp_dir.parent), '--resume',
                                      '--ckpt', 'cat', '--load_G_only'], save=False)
    assert resumed.ckpt == str(exp_dir / 'checkpoints' / f'{ITERATIONS:07d}.pt') and not resumed.load_G_only
    assert resumed.generator == 'synthetic'
    nothing = parse_training_options(['--exp-name', 'new', '--results', str(tmp_path), '--resume'], save=False)
    assert nothing.ckpt is None and nothing.gen_size == 64  # nothing to resume: a fresh default run


@pytest.mark.parametrize('heads', [1, 2])
def test_generated_visuals_draw_n_sample_samples_for_one_head_and_n_mean_with_clusters(tiny_configs, tmp_path,
                                                                                        monkeypatch, heads):
    import training.report as report
    argv = tiny_configs.synthetic + (tiny_configs.kmeans if heads > 1 else []) + [
        '--exp-name', 'vis', '--results', str(tmp_path), '--num_heads', str(heads), '--n_sample', '3',
        '--n_mean', '7', '--vis_batch_size', '2']
    opt, (generator, _, t_ema, ll) = _initial_models(argv)
    loss_fn = PERCEPTUAL_LOSSES.get(opt.loss_fn).build(opt)
    drawn = []
    real_sample_pairs = report.sample_pairs
    monkeypatch.setattr(report, 'sample_pairs', lambda *args, **kwargs: drawn.append(args[3]) or
                        real_sample_pairs(*args, **kwargs))
    grids = {}
    writer = type('Writer', (), {'grid': lambda self, images, name, step, **kw: grids.update({name: images}),
                                 'flush': lambda self: None})()
    visuals = report.TrainingVisuals(opt, writer, torch.device('cpu'))
    vis_z = torch.randn(opt.n_sample, generator.style_dim)
    visuals._log_generated(generator, t_ema, ll, loss_fn, vis_z, 0.5, 0)
    assert sum(drawn) == (3 if heads == 1 else 7) and max(drawn) <= 2
    assert grids['sample'].shape[0] == 3 and grids['mean_congealed_sample'].shape[0] == heads
