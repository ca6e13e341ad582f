"""--change_weighting: loss weights towards where a sample and its target differ (models.gangealing.change_weights)."""
import pytest
import torch

from models.gangealing import change_weights


def test_weights_are_one_at_strength_zero_and_favour_changed_pixels():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    y = x.repeat_interleave(3, 0).clone()          # 3 heads per sample
    y[:, :, 4:8, 4:8] += 0.8                       # the object moved here
    assert torch.equal(change_weights(x, y, 0.0), torch.ones(6, 1, 16, 16))
    w = change_weights(x, y, 0.9)
    assert w.shape == (6, 1, 16, 16) and not w.requires_grad
    assert torch.allclose(w.mean(dim=(1, 2, 3)), torch.ones(6), atol=0.02)  # the loss keeps its scale
    assert w[:, :, 5:7, 5:7].min() > 3 and w[:, :, 12:, 12:].max() < 0.2   # changed pixels weigh most
    assert torch.allclose(w[:, :, 12:, 12:], torch.full_like(w[:, :, 12:, 12:], 0.1), atol=0.01)  # floor 1 - A


def logged_losses_differ(train_in_process, tmp_path, tiny_configs, variants):
    """Two tiny runs, same seed and samples, that differ only in ``variants`` (two flag lists): do
    their logged losses at iteration 2 differ?"""
    losses = []
    for index, flags in enumerate(variants):
        result = train_in_process(tiny_configs.synthetic + [
            '--exp-name', f'run{index}', '--results', str(tmp_path), '--iter', '2', '--anneal_psi', '1',
            '--period', '2', '--vis_every', '100', '--ckpt_every', '100', '--log_every', '1'] + flags)
        assert result.code == 0, result.stderr[-3000:]
        losses.append([line for line in result.stdout.splitlines() + result.stderr.splitlines()
                       if 'iteration 2/2' in line])
    assert losses[0] and losses[1]
    return losses[0] != losses[1]


@pytest.mark.parametrize('value', ['-0.1', '1.5'])
def test_out_of_range_strength_is_refused(value, train_refused):
    train_refused(['--change_weighting', value], '--change_weighting must be in [0, 1]')


def test_training_with_change_weighting_moves_the_loss(tmp_path, train_in_process, tiny_configs):
    assert logged_losses_differ(train_in_process, tmp_path, tiny_configs,
                                [['--change_weighting', '0'], ['--change_weighting', '0.9']])


def test_weighting_turns_the_scene_worlds_loss_towards_the_true_warp():
    # benchmarks/studies/true_warp_preference.py as a command: in a world whose scene stays put, the plain
    # loss prefers leaving samples unaligned; weighted towards what changed, it prefers the true warp.
    import os
    import subprocess
    import sys
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, '-m', 'benchmarks.studies.true_warp_preference', '--worlds', 'scene',
                             '--losses', 'laplacian', '--strengths', '0,0.9', '--samples', '24', '--size', '32'],
                            cwd=repo, capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.split('|') for line in result.stdout.splitlines() if line.startswith('| scene |')]
    preferred = {float(row[3]): float(row[6].strip().rstrip('%')) for row in rows}
    assert set(preferred) == {0.0, 0.9}
    assert preferred[0.0] < 50 < 80 < preferred[0.9], preferred


def test_reposed_view_keeps_the_weights_to_where_the_target_has_its_object():
    x = torch.zeros(1, 3, 16, 16)
    x[:, :, 1:5, 1:5] = 1                          # the sample's object
    y = torch.zeros(2, 3, 16, 16)                  # 2 heads
    y[:, :, 10:14, 10:14] = 1                      # the target's object
    reposed = torch.zeros(1, 3, 16, 16)
    reposed[:, :, 1:5, 10:14] = 1                  # the sample under another pose
    plain = change_weights(x, y, 1.0, blur=1)
    localised = change_weights(x, y, 1.0, blur=1, reposed=reposed)
    assert localised.shape == (2, 1, 16, 16)
    assert plain[:, :, 2, 2].min() > 1 and plain[:, :, 11, 11].min() > 1          # both places weighed up
    assert localised[:, :, 2, 2].max() == 0 and localised[:, :, 11, 11].min() > 1  # only the target's


def test_reposed_samples_change_the_pose_and_keep_the_rest():
    from models.gangealing import reposed_samples
    from synthetic_world import WorldFactors
    from synthetic_world.generator import SyntheticGenerator
    torch.manual_seed(0)
    generator = SyntheticGenerator(32, factors=WorldFactors(scene=True))
    w = generator.get_latent(torch.randn(3, generator.style_dim))
    images = reposed_samples(generator, w, generator.coarse_layers, 16)
    assert images.shape == (3, 3, 16, 16) and not images.requires_grad
    assert images.abs().max() <= 1
    sample, _ = generator([w], input_is_latent=True)
    assert (resize(sample) - images).abs().mean(dim=(1, 2, 3)).min() > 0.05        # another pose
    same = reposed_samples(generator, w, 0, 32)                                    # no pose entries taken:
    assert (sample - same).abs().mean(dim=(1, 2, 3)).max() < 0.02                  # fresh noise only


def resize(images):
    from models.gangealing import resize_for_stn
    return resize_for_stn(images, 16)


def test_target_localisation_needs_change_weighting(train_refused):
    train_refused(['--change_weighting_target'], '--change_weighting A > 0')


def test_training_with_target_localisation_runs_and_moves_the_loss(tmp_path, train_in_process, tiny_configs):
    weighted = ['--flips', '--change_weighting', '0.9']
    assert logged_losses_differ(train_in_process, tmp_path, tiny_configs,
                                [weighted, weighted + ['--change_weighting_target']])
