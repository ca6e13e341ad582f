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


@pytest.mark.parametrize('value', ['-0.1', '1.5'])
def test_out_of_range_strength_is_refused(value, tmp_path, train_in_process):
    result = train_in_process(['--exp-name', 'x', '--results', str(tmp_path), '--change_weighting', value])
    assert result.code == 2
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith('train.py: error:') and '--change_weighting must be in [0, 1]' in message, message
    assert not (tmp_path / 'x').exists()


def test_training_with_change_weighting_moves_the_loss(tmp_path, train_in_process, tiny_configs):
    # Same seed, same samples: only the weighting differs, so the logged reconstruction loss does.
    losses = []
    for strength in ('0', '0.9'):
        result = train_in_process(tiny_configs.synthetic + [
            '--exp-name', f'cw{strength}', '--results', str(tmp_path), '--iter', '2', '--anneal_psi', '1',
            '--period', '2', '--vis_every', '100', '--ckpt_every', '100', '--log_every', '1',
            '--change_weighting', strength])
        assert result.code == 0, result.stderr[-3000:]
        losses.append([line for line in result.stdout.splitlines() + result.stderr.splitlines()
                       if 'iteration 2/2' in line])
    assert losses[0] and losses[1] and losses[0] != losses[1]


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
