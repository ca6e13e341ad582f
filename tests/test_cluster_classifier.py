"""The cluster classifier: the released layout, strict loading, its decisions, its
training program (end to end and resumed), and the applications using it."""
import argparse
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from models import get_stn
from models.cluster_classifier import ResnetClassifier, classifier_from_state_dict
from models.spatial_transformers import flow_total_variation
from utils.checkpoint import save_checkpoint
from utils.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The 'classifier' entry of the released car and horse checkpoints (key names and
# shapes from the official checkpoint schema): flow_size 128, multiplier 0.5,
# 4 clusters with mirrors, supersize 256.
RELEASED_CLASSIFIER_SHAPES = {
    'input_downsample.kernel_horz': (3, 1, 1, 4),
    'input_downsample.kernel_vert': (3, 1, 4, 1),
    'convs.0.0.weight': (64, 3, 1, 1),
    'convs.0.1.bias': (64,),
    'convs.1.conv1.0.weight': (64, 64, 3, 3),
    'convs.1.conv1.1.bias': (64,),
    'convs.1.conv2.0.kernel': (4, 4),
    'convs.1.conv2.1.weight': (128, 64, 3, 3),
    'convs.1.conv2.2.bias': (128,),
    'convs.1.skip.0.kernel': (4, 4),
    'convs.1.skip.1.weight': (128, 64, 1, 1),
    'convs.2.conv1.0.weight': (128, 128, 3, 3),
    'convs.2.conv1.1.bias': (128,),
    'convs.2.conv2.0.kernel': (4, 4),
    'convs.2.conv2.1.weight': (512, 128, 3, 3),
    'convs.2.conv2.2.bias': (512,),
    'convs.2.skip.0.kernel': (4, 4),
    'convs.2.skip.1.weight': (512, 128, 1, 1),
    'convs.3.conv1.0.weight': (512, 512, 3, 3),
    'convs.3.conv1.1.bias': (512,),
    'convs.3.conv2.0.kernel': (4, 4),
    'convs.3.conv2.1.weight': (512, 512, 3, 3),
    'convs.3.conv2.2.bias': (512,),
    'convs.3.skip.0.kernel': (4, 4),
    'convs.3.skip.1.weight': (512, 512, 1, 1),
    'convs.4.conv1.0.weight': (512, 512, 3, 3),
    'convs.4.conv1.1.bias': (512,),
    'convs.4.conv2.0.kernel': (4, 4),
    'convs.4.conv2.1.weight': (512, 512, 3, 3),
    'convs.4.conv2.2.bias': (512,),
    'convs.4.skip.0.kernel': (4, 4),
    'convs.4.skip.1.weight': (512, 512, 1, 1),
    'convs.5.conv1.0.weight': (512, 512, 3, 3),
    'convs.5.conv1.1.bias': (512,),
    'convs.5.conv2.0.kernel': (4, 4),
    'convs.5.conv2.1.weight': (512, 512, 3, 3),
    'convs.5.conv2.2.bias': (512,),
    'convs.5.skip.0.kernel': (4, 4),
    'convs.5.skip.1.weight': (512, 512, 1, 1),
    'final_conv.0.weight': (512, 512, 3, 3),
    'final_conv.1.bias': (512,),
    'to_logits.weight': (8, 8192),
    'to_logits.bias': (8,),
}


def test_state_dict_matches_the_released_classifier():
    classifier = ResnetClassifier(128, channel_multiplier=0.5, num_heads=8, supersize=256)
    shapes = {key: tuple(value.shape) for key, value in classifier.state_dict().items()}
    assert shapes == RELEASED_CLASSIFIER_SHAPES
    assert classifier.num_clusters == 4 and classifier.flips


def test_a_released_shaped_entry_loads_strictly():
    gen = torch.Generator().manual_seed(0)
    entry = {key: torch.randn(shape, generator=gen) for key, shape in RELEASED_CLASSIFIER_SHAPES.items()}
    classifier = classifier_from_state_dict(entry, 128, 0.5, 256, num_clusters=4)
    assert classifier.flips and classifier.num_heads == 8
    own = classifier.state_dict()
    for key, value in entry.items():
        if key.endswith('kernel') or 'input_downsample' in key:
            continue  # fixed filters are the architecture's own
        assert torch.equal(own[key], value), key
    with torch.no_grad():
        logits = classifier(torch.rand(1, 3, 256, 256) * 2 - 1)
    assert logits.shape == (1, 8) and torch.isfinite(logits).all()

    missing = dict(entry)
    del missing['convs.3.conv1.0.weight']
    with pytest.raises(UserError, match='missing: convs.3.conv1.0.weight'):
        classifier_from_state_dict(missing, 128, 0.5, 256, num_clusters=4)
    wrong = dict(entry, **{'final_conv.0.weight': torch.zeros(512, 512, 1, 1)})
    with pytest.raises(UserError, match='wrong shape: final_conv.0.weight'):
        classifier_from_state_dict(wrong, 128, 0.5, 256, num_clusters=4)
    with pytest.raises(UserError, match='fits neither 3 clusters'):
        classifier_from_state_dict(entry, 128, 0.5, 256, num_clusters=3)


def biased_classifier(favourite, num_clusters=2, size=16):
    """A small classifier that always predicts class ``favourite`` (and ranks the others by index)."""
    torch.manual_seed(0)
    classifier = ResnetClassifier(size, channel_multiplier=0.5, num_heads=2 * num_clusters, supersize=2 * size,
                                  max_channels=16)
    with torch.no_grad():
        classifier.to_logits.weight.zero_()
        bias = torch.arange(2 * num_clusters, dtype=torch.float32)
        bias[favourite] = 10.0
        classifier.to_logits.bias.copy_(bias)
    return classifier.eval()


def test_classifier_decisions():
    images = torch.rand(3, 3, 32, 32) * 2 - 1
    classifier = biased_classifier(favourite=3)  # class 3: cluster 1, mirrored
    assert classifier.assign(images).tolist() == [3, 3, 3]
    assert classifier.assign(images, ignore_flips=True).tolist() == [1, 1, 1]
    flipped, logits, classes, mirrored = classifier.run_flip(images)
    assert torch.equal(flipped, images.flip(3)) and mirrored.all() and logits.shape == (3, 4)
    chosen, _, chosen_mirrored, kept = classifier.run(images, 1, return_flip_indices=True)
    assert kept.tolist() == [0, 1, 2] and chosen_mirrored.all() and torch.equal(chosen, images.flip(3))
    assert classifier.run(images, 0)[0].shape[0] == 0
    # For cluster 0 the mirror (class 2) outscores the plain image (class 0).
    target, target_mirrored = classifier.run_flip_target(images, 0)
    assert target_mirrored.all() and torch.equal(target, images.flip(3))
    plain = biased_classifier(favourite=0)
    target, target_mirrored = plain.run_flip_target(images, 0)
    assert not target_mirrored.any() and torch.equal(target, images)
    with pytest.raises(UserError, match='cluster 2 does not exist'):
        classifier.run(images, 2)


# ----------------------------------------------------------------------------- training program

TINY = ['--generator', 'synthetic', '--device', 'cpu', '--gen_size', '32', '--real_size', '32', '--flow_size', '16',
        '--stn_channel_multiplier', '0.125', '--stn_max_channels', '16', '--n_pca', '200', '--n_mean', '8',
        '--n_sample', '4', '--vis_batch_size', '8', '--synthetic_eval_images', '8', '--synthetic_num_images', '16',
        '--kmeans_candidates', '16']


def run(*args):
    env = {k: v for k, v in os.environ.items() if k not in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR',
                                                             'MASTER_PORT')}
    env.update(OMP_NUM_THREADS='1', PYTHONPATH=REPO)
    return subprocess.run([sys.executable, *map(str, args)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)


def test_train_cluster_classifier_end_to_end_and_resume(tmp_path):
    result = run('train.py', '--exp-name', 'model', '--results', tmp_path, '--num_heads', '2', '--flips',
                 '--batch', '2', '--iter', '2', *TINY)
    assert result.returncode == 0, result.stderr
    model = tmp_path / 'model' / 'checkpoints' / '0000002.pt'
    # The architecture comes from the checkpoint: only training flags are given here.
    common = ('--device', 'cpu', '--batch', '4', '--iter', '4', '--ckpt_every', '2', '--vis_every', '2',
              '--n_mean', '16', '--n_sample', '4', '--vis_batch_size', '8', '--synthetic_eval_images', '8',
              '--synthetic_num_images', '16')
    result = run('train_cluster_classifier.py', '--exp-name', 'cls', '--results', tmp_path, '--ckpt', model, *common)
    assert result.returncode == 0, result.stderr
    exp = tmp_path / 'cls'
    assert sorted(os.listdir(exp / 'checkpoints')) == ['0000002.pt', '0000004.pt']
    final = torch.load(exp / 'checkpoints' / '0000004.pt', map_location='cpu', weights_only=False)
    assert {'classifier', 'g_ema', 't_ema', 'll', 'cls_optim', 'cls_sched', 'args'} <= set(final)
    assert final['iteration'] == 4 and final['args'].num_heads == 2 and final['args'].flips
    assert final['classifier']['to_logits.bias'].shape == (4,)  # 2 heads x (plain, mirrored)
    source = torch.load(model, map_location='cpu', weights_only=False)
    for key, value in source['t_ema'].items():  # the transformer is frozen
        assert torch.equal(final['t_ema'][key], value), key
    summary = json.loads((exp / 'classifier_accuracy.json').read_text())
    assert summary['held_out_samples'] == 16 and 0 <= summary['accuracy'] <= summary['cluster_accuracy'] <= 1
    assert any(name.startswith('classifier_sample_cluster') for name in os.listdir(exp))

    # Resuming from the middle checkpoint gives the same classifier as the uninterrupted run.
    result = run('train_cluster_classifier.py', '--exp-name', 'resumed', '--results', tmp_path, '--ckpt',
                 exp / 'checkpoints' / '0000002.pt', *common)
    assert result.returncode == 0, result.stderr
    assert 'Resuming cluster classifier training' in result.stdout
    resumed = torch.load(tmp_path / 'resumed' / 'checkpoints' / '0000004.pt', map_location='cpu', weights_only=False)
    for key, value in final['classifier'].items():
        assert torch.equal(resumed['classifier'][key], value), key

    # --precision is used: bfloat16 labels and classifier train another, close, classifier than float32.
    trained = {}
    for precision in ('fp32', 'bf16'):
        result = run('train_cluster_classifier.py', '--exp-name', precision, '--results', tmp_path, '--ckpt', model,
                     *common, '--iter', '2', '--precision', precision)
        assert result.returncode == 0, result.stderr
        trained[precision] = torch.load(tmp_path / precision / 'checkpoints' / '0000002.pt', map_location='cpu',
                                        weights_only=False)['classifier']
    assert any(not torch.equal(trained['bf16'][key], value) for key, value in trained['fp32'].items())
    for key, value in trained['fp32'].items():  # two Adam steps of lr 1e-3 apart at most
        torch.testing.assert_close(trained['bf16'][key], value, atol=5e-3, rtol=0)

    # The study benchmarks/studies/classifier_bank.py, run as a command: it labels samples by the
    # trainer's rule and fits the classifier to them.
    study = ('-m', 'benchmarks.studies.classifier_bank')
    for name, samples in (('bank', 12), ('held', 6)):
        result = run(*study, 'label', '--ckpt', model, '--out', tmp_path / f'{name}.pt', '--samples', samples,
                     '--chunk', '5', '--seed', samples)
        assert result.returncode == 0, result.stderr
    bank = torch.load(tmp_path / 'bank.pt', weights_only=True)
    assert bank['inputs'].shape == (12, 3, 16, 16) and bank['distances'].shape == (12, 4)
    assert torch.equal(bank['labels'], bank['distances'].argmin(dim=1))
    assert bank['modes'].shape == (12,)  # the synthetic world's true modes (one mode here: all 0)
    for targets in ('soft', 'modes'):
        result = run(*study, 'fit', '--ckpt', model, '--bank', tmp_path / 'bank.pt', '--held_out',
                     tmp_path / 'held.pt', '--steps', '3', '--eval_every', '2', '--targets', targets)
        assert result.returncode == 0, result.stderr
        lines = [line for line in result.stdout.splitlines() if line.startswith('step ')]
        assert [line.split(':')[0] for line in lines] == ['step 2', 'step 3']
        assert all(0 <= float(line.split('agreement ')[1].split()[0]) <= 1 for line in lines)

    # A model with one head and no mirrors has nothing to classify.
    single = TINY[:TINY.index('--kmeans_candidates')]  # no centroids to pick with one head
    result = run('train.py', '--exp-name', 'single', '--results', tmp_path, '--batch', '2', '--iter', '1', *single)
    assert result.returncode == 0, result.stderr
    result = run('train_cluster_classifier.py', '--exp-name', 'x', '--results', tmp_path, '--ckpt',
                 tmp_path / 'single' / 'checkpoints' / '0000001.pt', *common)
    assert result.returncode == 1 and result.stderr.strip().splitlines()[-1].startswith('error: this model has one head')


def _options_checkpoint(path, argv, **extra):
    """A checkpoint file with train.py's keys whose args are train.py's options for ``argv``."""
    from options import parse_training_options
    args = parse_training_options(argv, save=False)
    for key, value in extra.items():
        setattr(args, key, value)
    state = {'g_ema': {}, 't': {}, 't_ema': {}, 'll': {}, 'args': args, 'format_version': 2, 'iteration': 2}
    return save_checkpoint(state, str(path))


def test_classifier_options_take_the_model_but_not_the_schedule_of_a_train_checkpoint(tmp_path, monkeypatch):
    import train_cluster_classifier
    monkeypatch.chdir(tmp_path)
    model = _options_checkpoint(tmp_path / 'model.pt', [
        '--exp-name', 'm', '--results', str(tmp_path), *TINY, '--num_heads', '2', '--flips', '--synthetic_modes',
        '2', '--iter', '7', '--period', '3', '--anneal_psi', '2', '--seed', '9', '--batch', '3', '--tm', '3',
        '--ckpt_every', '5', '--stn_lr', '0.5'])
    base = ['--exp-name', 'cls', '--results', str(tmp_path), '--ckpt', model]
    opt, _, _ = train_cluster_classifier.parse_options(base)
    # The model's description comes back ...
    assert (opt.num_heads, opt.flips, opt.gen_size, opt.flow_size, opt.synthetic_modes) == (2, True, 32, 16, 2)
    # ... its training schedule does not: the classifier's run starts from the defaults.
    fresh = train_cluster_classifier.parse_options(base[:4] + ['--ckpt', model, '--iter', '11'])[0]
    assert fresh.iter == 11
    from models.generators.synthetic import DEMO_DEFAULTS
    assert (opt.iter, opt.period, opt.seed, opt.batch, opt.tm, opt.ckpt_every) == \
        (DEMO_DEFAULTS['iter'], DEMO_DEFAULTS['period'], 0, DEMO_DEFAULTS['batch'], 2, DEMO_DEFAULTS['ckpt_every'])

    # A classifier checkpoint continues its own run: its schedule and --cls_lr come back.
    state = torch.load(model, map_location='cpu', weights_only=False)
    cls_args = argparse.Namespace(**{**vars(opt), 'iter': 13, 'period': 4, 'cls_lr': 0.02, 'seed': 5})
    own = save_checkpoint({**state, 'classifier': {}, 'cls_optim': {}, 'cls_sched': {}, 'args': cls_args},
                          str(tmp_path / 'cls.pt'))
    resumed, _, _ = train_cluster_classifier.parse_options(base[:4] + ['--ckpt', own])
    assert (resumed.iter, resumed.period, resumed.cls_lr, resumed.seed, resumed.num_heads) == (13, 4, 0.02, 5, 2)


# ----------------------------------------------------------------------------- applications

SIZE = 32


def two_head_transformer():
    """A seeded 2-head similarity + flow transformer whose flows depend on the image, and its options."""
    torch.manual_seed(0)
    t = get_stn(['similarity', 'flow'], flow_size=16, supersize=SIZE, channel_multiplier=0.5, num_heads=2,
                max_channels=32)
    with torch.no_grad():
        weight = t.stns[1].warp_head.flow_out[-1].weight
        weight.copy_(torch.randn(weight.shape) * 2)
    args = argparse.Namespace(transform=['similarity', 'flow'], flow_size=16, real_size=SIZE,
                              stn_channel_multiplier=0.5, num_heads=2, flips=True, padding_mode='border')
    return t, args


@pytest.fixture(scope='module')
def clustered(tmp_path_factory):
    """Synthetic data, a 2-head transformer with image-dependent flows, and its
    checkpoint with and without a classifier that always picks (head 1, mirrored)."""
    root = tmp_path_factory.mktemp('clustered')
    data = root / 'data'
    result = run('prepare_data.py', '--synthetic', '--size', SIZE, '--max_images', 6, '--out', data)
    assert result.returncode == 0, result.stderr
    t, args = two_head_transformer()
    plain = save_checkpoint({'t_ema': t.state_dict(), 'args': args}, str(root / 'plain.pt'))
    classifier = biased_classifier(favourite=3)
    with_classifier = save_checkpoint({'t_ema': t.state_dict(), 'classifier': classifier.state_dict(), 'args': args},
                                      str(root / 'classified.pt'))
    from datasets.lmdb_dataset import MultiResolutionDataset
    dataset = MultiResolutionDataset(str(data), SIZE)
    images = torch.stack([dataset[i] for i in range(len(dataset))])
    return dict(root=root, data=data, t=t.eval(), plain=plain, classified=with_classifier, images=images)


# float32 trunks: the outputs are compared with the transformer run here in float32.
COMMON = ('--real_size', SIZE, '--batch', 4, '--num_workers', 0, '--device', 'cpu', '--precision', 'fp32')


def test_flow_scores_use_the_classifier(clustered, tmp_path):
    result = run('-m', 'applications.flow_scores', '--ckpt', clustered['classified'], '--real_data_path',
                 clustered['data'], '--recompute', *COMMON)
    assert result.returncode == 0, result.stderr
    scores = torch.load(clustered['data'] / 'flow_scores.pt', weights_only=True)
    images = clustered['images']
    with torch.no_grad():  # the classifier says: mirror every image, use head 1
        _, flows = clustered['t'](images.flip(3), return_flow=True, warp_policy=torch.ones(len(images), dtype=torch.long),
                                  padding_mode='border')
    torch.testing.assert_close(scores, -flow_total_variation(flows), rtol=1e-3, atol=1e-9)


def test_clustering_models_need_a_classifier_or_a_cluster(clustered, tmp_path):
    result = run('-m', 'applications.propagate_to_images', '--ckpt', clustered['plain'], '--real_data_path',
                 clustered['data'], '--out', tmp_path / 'v', *COMMON)
    line = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 1 and line.startswith('error:') and 'no cluster classifier' in line
    result = run('-m', 'applications.propagate_to_images', '--ckpt', clustered['classified'], '--real_data_path',
                 clustered['data'], '--cluster', 2, '--out', tmp_path / 'v', *COMMON)
    line = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 1 and '--cluster 2 does not exist' in line
    assert not os.path.exists(tmp_path / 'v')
    # With the classifier no --cluster is needed: each image goes to the head it predicts.
    result = run('-m', 'applications.propagate_to_images', '--ckpt', clustered['classified'], '--real_data_path',
                 clustered['data'], '--out', tmp_path / 'v', '--save_individual_images', *COMMON)
    assert result.returncode == 0, result.stderr
    from PIL import Image
    import numpy as np
    images = clustered['images']
    with torch.no_grad():
        expected = clustered['t'](images.flip(3), output_resolution=SIZE, padding_mode='border',
                                  warp_policy=torch.ones(len(images), dtype=torch.long))
    for i in range(len(images)):
        saved = np.asarray(Image.open(tmp_path / 'v' / 'congealed_images' / f'{i:03}.png').convert('RGB'))
        want = ((expected[i].permute(1, 2, 0).clamp(-1, 1) + 1) * 127.5).round().numpy()
        assert np.abs(saved.astype(float) - want).max() <= 1


def test_sigterm_writes_the_current_iteration_and_exits(tmp_path):
    # Stopped as train.py stops: the current iteration saved with every rank's RNG state, a message, 128 + signal.
    result = run('train.py', '--exp-name', 'model', '--results', tmp_path, '--num_heads', '2', '--batch', '2',
                 '--iter', '1', *TINY)
    assert result.returncode == 0, result.stderr
    env = {k: v for k, v in os.environ.items() if k not in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR',
                                                             'MASTER_PORT')}
    env.update(OMP_NUM_THREADS='1', PYTHONPATH=REPO)
    folder = tmp_path / 'stopped'
    proc = subprocess.Popen([sys.executable, 'train_cluster_classifier.py', '--exp-name', 'stopped', '--results',
                             str(tmp_path), '--ckpt', str(tmp_path / 'model' / 'checkpoints' / '0000001.pt'),
                             '--device', 'cpu', '--batch', '2', '--iter', '100000', '--ckpt_every', '100000',
                             '--vis_every', '100000', '--n_sample', '4', '--synthetic_eval_images', '8',
                             '--synthetic_num_images', '16'],
                            cwd=REPO, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 180

    def started():  # the start-up visuals are written just before the first iteration
        return folder.exists() and any(name.startswith('classifier_sample_cluster') for name in os.listdir(folder))
    while time.time() < deadline and not started() and proc.poll() is None:
        time.sleep(0.5)
    time.sleep(3)  # into the iterations
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert 'Traceback' not in err
    saved = os.listdir(folder / 'checkpoints')
    assert len(saved) == 1
    ckpt = torch.load(folder / 'checkpoints' / saved[0], map_location='cpu', weights_only=False)
    assert ckpt['iteration'] == int(saved[0][:-3]) > 0 and 'rng_state' in ckpt and 'classifier' in ckpt
    assert f"Stopped by signal {int(signal.SIGTERM)} at iteration {ckpt['iteration']}; checkpoint saved in " \
           f"{folder / 'checkpoints'}" in out
