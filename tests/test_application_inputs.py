"""Every application uses or refuses its input, before any work, and leaves nothing
that looks finished when it is interrupted; each runs with its default workers.

World: the hand-set shift transformer and LMDB of tests/test_applications.
"""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import subprocess_env
from tests.test_applications import REPO, SIZE, run_module, single_error_line, world  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures('one_thread')

COMMON = ('--real_size', SIZE, '--device', 'cpu', '--precision', 'fp32')


def run_main(module_name, argv, capsys):
    """Run ``module_name``'s main(argv) here -> (exit code, stderr lines starting with 'error:', stderr)."""
    import importlib
    main = importlib.import_module(module_name).main
    with pytest.raises(SystemExit) as stop:
        main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert 'Traceback' not in err
    return stop.value.code, [line for line in err.splitlines() if 'error:' in line], err


# ----------------------------------------------------------------------------- flags that are not read

UNREAD = [
    ('applications.propagate_to_images', ('--num_pck_pairs', 4), '--num_pck_pairs'),
    ('applications.propagate_to_images', ('--local_rank', 1), '--local_rank'),
    ('applications.mixed_reality', ('--debug',), '--debug'),
    ('applications.mixed_reality', ('--num_pck_pairs', 3), '--num_pck_pairs'),
    ('applications.pck', ('--output_resolution', 64), '--output_resolution'),
    ('applications.vis_correspondence', ('--seed', 2), '--seed'),
    ('applications.congeal_dataset', ('--stn_max_channels', 8), '--stn_max_channels'),
]

LABELLED = ('applications.propagate_to_images', 'applications.mixed_reality', 'applications.vis_correspondence')


@pytest.mark.parametrize('module,extra,flag', UNREAD, ids=[f'{m.split(".")[1]}{f}' for m, _, f in UNREAD])
def test_applications_refuse_flags_they_do_not_read(world, tmp_path, capsys, monkeypatch, module, extra, flag):
    monkeypatch.delenv('LOCAL_RANK', raising=False)
    out = tmp_path / 'out'
    label = ('--label_path', world['label']) if module in LABELLED else ()
    code, errors, _ = run_main(module, ['--ckpt', world['ckpt'], '--real_data_path', world['data'], *label,
                                        '--out', out, *extra, *COMMON], capsys)
    assert code == 2 and len(errors) == 1
    assert f'{flag} ' in errors[0] and 'drop it' in errors[0]
    assert not out.exists()



@pytest.mark.parametrize('extra,flag', [(('--out', 'elsewhere'), '--out'), (('--output_resolution', 64),
                                                                            '--output_resolution')])
def test_flow_scores_refuses_flags_it_does_not_read(world, capsys, extra, flag):
    # Scores go into the dataset folder at the transformer's resolutions: an --out or a resolution would be ignored.
    before = sorted(os.listdir(world['data']))
    code, errors, _ = run_main('applications.flow_scores', ['--ckpt', world['ckpt'], '--real_data_path',
                                                             world['data'], *extra, *COMMON], capsys)
    assert code == 2 and len(errors) == 1
    assert f'{flag} ' in errors[0] and 'drop it' in errors[0]
    assert sorted(os.listdir(world['data'])) == before

def test_local_rank_given_by_a_launcher_is_accepted(world, tmp_path, capsys, monkeypatch):
    from applications.pck import pck_argparse
    from options import parse_eval_options
    monkeypatch.setenv('LOCAL_RANK', '1')
    opt = parse_eval_options(pck_argparse(), ['--ckpt', 'x', '--local_rank', '1'], verbose=False)
    assert opt.local_rank == 1
    monkeypatch.setenv('LOCAL_RANK', '0')
    with pytest.raises(SystemExit):
        parse_eval_options(pck_argparse(), ['--ckpt', 'x', '--local_rank', '1'], verbose=False)
    assert 'LOCAL_RANK=0' in capsys.readouterr().err


# ----------------------------------------------------------------------------- problems found before any work

@pytest.mark.parametrize('module', ['applications.propagate_to_images', 'applications.congeal_dataset',
                                    'applications.pck', 'applications.vis_correspondence'])
def test_an_out_under_a_file_is_one_error_line(world, tmp_path, capsys, module):
    blocker = tmp_path / 'notes.txt'
    blocker.write_text('a file')
    code, errors, _ = run_main(module, ['--ckpt', world['ckpt'], '--real_data_path', world['data'],
                                        '--out', blocker / 'sub', *COMMON], capsys)
    assert code == 1 and len(errors) == 1 and 'notes.txt' in errors[0] and 'is a file' in errors[0]
    assert 'cannot write to the output folder' in errors[0]
    assert os.listdir(tmp_path) == ['notes.txt']


def test_edit_studio_refuses_an_out_under_a_file(world, tmp_path):
    pytest.importorskip('starlette')
    blocker = tmp_path / 'notes.txt'
    blocker.write_text('a file')
    result = run_module('applications.edit_studio', '--ckpt', world['ckpt'], '--real_data_path', world['data'],
                        '--out', blocker / 'sub', '--n_mean', 2, *COMMON)
    assert 'is a file' in single_error_line(result)


def test_out_of_range_indices_and_missing_average_are_refused_before_any_output(world, tmp_path, capsys):
    out = tmp_path / 'out'
    base = ['--ckpt', world['ckpt'], '--real_data_path', world['data'], '--out', out, '--num_workers', 0, *COMMON]
    code, errors, _ = run_main('applications.propagate_to_images', base + ['--n_mean', 4, '--dset_indices', 1, 99],
                               capsys)
    assert code == 1 and len(errors) == 1 and '--dset_indices 99 is out of range' in errors[0]
    assert not out.exists()  # the average was not computed and written first
    code, errors, _ = run_main('applications.propagate_to_images',
                               base + ['--label_path', world['label'], '--average_path', tmp_path / 'none.png'],
                               capsys)
    assert code == 1 and 'none.png' in errors[0] and not out.exists()


def test_a_non_square_label_is_refused(world, tmp_path, capsys):
    label = np.zeros((SIZE, SIZE // 2, 4), np.uint8)
    label[4:8, 4:8] = 255
    path = tmp_path / 'tall.png'
    Image.fromarray(label).save(path)
    out = tmp_path / 'out'
    code, errors, _ = run_main('applications.propagate_to_images',
                               ['--ckpt', world['ckpt'], '--real_data_path', world['data'], '--out', out,
                                '--label_path', path, '--num_workers', 0, *COMMON], capsys)
    assert code == 1 and len(errors) == 1
    assert f'is {SIZE // 2} x {SIZE} pixels' in errors[0] and 'square' in errors[0]
    assert not out.exists()


def test_the_studio_refuses_non_square_and_unreadable_labels(world, tmp_path):
    pytest.importorskip('starlette')
    from applications.studio.engine import RequestError
    from applications.studio.launch import build_engine
    from utils.image_io import encode_image
    argv = ['--ckpt', world['ckpt'], '--real_data_path', world['data'], '--n_mean', 2, '--out', tmp_path / 's1',
            *COMMON]
    _, engine = build_engine([str(a) for a in argv], verbose=False)
    wide = np.zeros((SIZE, 2 * SIZE, 3), np.uint8)
    with pytest.raises(RequestError, match=f'{2 * SIZE} x {SIZE} pixels.*square'):
        engine.set_label(encode_image(wide))
    with pytest.raises(RequestError) as error:
        engine.set_label(b'not an image at all')
    assert 'BytesIO' not in str(error.value) and 'not a readable image' in str(error.value)
    # At start-up the message names the label file.
    (tmp_path / 'bad.png').write_bytes(b'not an image at all')
    result = run_module('applications.edit_studio', '--ckpt', world['ckpt'], '--real_data_path', world['data'],
                        '--label_path', tmp_path / 'bad.png', '--n_mean', 2, '--out', tmp_path / 's2', *COMMON)
    line = single_error_line(result)
    assert 'bad.png' in line and 'BytesIO' not in line


def test_a_corrupt_flow_score_file_is_one_short_line(world, tmp_path, capsys):
    path = tmp_path / 'scores.pt'
    torch.save({'not': 'scores', 'fn': print}, path)  # a pickle weights_only refuses
    for content in (path.read_bytes(), b'garbage'):
        path.write_bytes(content)
        code, errors, _ = run_main('applications.propagate_to_images',
                                   ['--ckpt', world['ckpt'], '--real_data_path', world['data'], '--out',
                                    tmp_path / 'out', '--flow_scores', path, '--num_workers', 0, *COMMON], capsys)
        assert code == 1 and len(errors) == 1 and 'scores.pt' in errors[0]
        assert len(errors[0]) < 500 and 'weights_only' not in errors[0]


def test_train_stylegan2_refuses_batch_zero(tmp_path, capsys):
    import train_stylegan2
    with pytest.raises(SystemExit) as stop:
        train_stylegan2.main(['--exp-name', 'zero', '--results', str(tmp_path), '--real_data_path', str(tmp_path),
                              '--batch', '0'])
    assert stop.value.code == 2 and '--batch must be at least 1' in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- interrupted runs

def leave_a_killed_runs_staging(final):
    """What a killed run leaves: a staging folder of ``final`` whose process has ended."""
    code = f'from utils.atomic_io import make_staging_folder; print(make_staging_folder({str(final)!r}))'
    result = subprocess.run([sys.executable, '-c', code], cwd=REPO, env=subprocess_env(), capture_output=True,
                            text=True, check=True)
    path = result.stdout.strip()
    with open(os.path.join(path, '000000.png'), 'wb') as f:
        f.write(b'half a frame')
    return path


def test_congeal_dataset_removes_a_killed_runs_staging_folder(world, tmp_path, capsys):
    out = tmp_path / 'aligned'
    leftover = leave_a_killed_runs_staging(out)
    from applications.congeal_dataset import main
    main([str(a) for a in ('--ckpt', world['ckpt'], '--real_data_path', world['data'], '--out', out,
                           '--output_resolution', 16, '--min_effective_resolution', 1, '--max_out_of_bounds', 1,
                           '--num_workers', 0,
                           *COMMON)])
    assert not os.path.exists(leftover)
    assert sorted(os.listdir(tmp_path)) == ['aligned'] and (out / 'data.mdb').is_file()


def test_mixed_reality_frames_appear_only_when_complete(world, tmp_path, capsys, monkeypatch):
    import applications.mixed_reality as mixed_reality
    out = tmp_path / 'mr'
    argv = [str(a) for a in ('--ckpt', world['ckpt'], '--real_data_path', world['data'], '--label_path',
                             world['label'], '--resolution', SIZE, '--save_frames', '--batch', 2, '--num_workers', 0,
                             '--out', out, *COMMON)]
    real = mixed_reality.propagate_frames
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C after the first batch was written
        return real(*args, **kwargs)

    monkeypatch.setattr(mixed_reality, 'propagate_frames', interrupted)
    with pytest.raises(KeyboardInterrupt):
        mixed_reality.main(argv)
    folder = out / 'video_data'
    assert os.listdir(folder) == []  # no frames/, no videos, no staging

    leftover = leave_a_killed_runs_staging(folder / 'frames')  # as a SIGKILL would leave it
    monkeypatch.setattr(mixed_reality, 'propagate_frames', real)
    mixed_reality.main(argv)
    assert not os.path.exists(leftover)
    assert sorted(os.listdir(folder)) == ['congealed.mp4', 'congealing_frames', 'frames', 'propagated.mp4']
    assert sorted(os.listdir(folder / 'frames')) == [f'{i:06d}.png' for i in range(len(world['images']))]


# ----------------------------------------------------------------------------- default workers, end to end

def test_every_application_runs_with_its_default_workers(world, tmp_path):
    # No --num_workers: each application's DataLoaders start their default worker
    # processes (vis_correspondence forks them after encoding its first videos).
    data = tmp_path / 'data'
    shutil.copytree(world['data'], data)  # flow_scores writes beside the dataset
    common = ('--ckpt', world['ckpt'], '--real_data_path', data, '--batch', 4, *COMMON)
    runs = [
        ('applications.propagate_to_images', ('--out', tmp_path / 'p', '--n_mean', 4, '--label_path', world['label']),
         ['average.png', 'propagated_grid.png']),
        ('applications.pck', ('--out', tmp_path / 'k'), ['pck.json']),
        ('applications.flow_scores', (), []),
        ('applications.congeal_dataset', ('--out', tmp_path / 'c', '--output_resolution', 16,
                                          '--min_effective_resolution', 1, '--max_out_of_bounds', 1), ['data.mdb']),
        ('applications.vis_correspondence', ('--out', tmp_path / 'v', '--n_mean', 8, '--length', 4,
                                             '--label_path', world['label'], '--resolution', SIZE),
         ['smoothly_congeal.mp4', 'smoothly_average.mp4']),
        ('applications.mixed_reality', ('--out', tmp_path / 'm', '--label_path', world['label'], '--resolution',
                                        SIZE), ['video_data/propagated.mp4']),
    ]
    for module, extra, expected in runs:
        result = run_module(module, *common, *extra)
        assert result.returncode == 0, (module, result.stderr[-2000:])
        folder = extra[1] if extra else data
        for name in expected:
            assert os.path.isfile(os.path.join(folder, name)), (module, name)
    assert os.path.isfile(data / 'flow_scores.pt')


# ----------------------------------------------------------------------------- the original's recipe

def test_images_at_their_own_size_through_congeal_dataset_real_size_zero(world, tmp_path, capsys):
    # python prepare_data.py --pad none --size 0, then congeal_dataset --real_size 0.
    import prepare_data
    from datasets.lmdb_dataset import MultiResolutionDataset
    folder = tmp_path / 'raw'
    folder.mkdir()
    rng = np.random.default_rng(0)
    shapes = [(30, 40), (48, 48), (44, 30)]  # (height, width): non-square, of several sizes
    for i, (height, width) in enumerate(shapes):
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(folder / f'{i}.png')
    data = tmp_path / 'data'
    assert prepare_data.main(['--path', str(folder), '--out', str(data), '--pad', 'none', '--size', '0']) in (0, None)
    stored = MultiResolutionDataset(str(data), 0)
    assert sorted(tuple(stored[i].shape[1:]) for i in range(3)) == sorted(shapes)
    out = tmp_path / 'aligned'
    from applications.congeal_dataset import main
    main([str(a) for a in ('--ckpt', world['ckpt'], '--real_data_path', data, '--real_size', 0, '--out', out,
                           '--output_resolution', 16, '--min_effective_resolution', 1, '--max_out_of_bounds', 1,
                           '--num_workers', 0, '--device', 'cpu')])
    aligned = MultiResolutionDataset(str(out), 16)
    assert len(aligned) == 3 and aligned[0].shape == (3, 16, 16)
    assert torch.equal(torch.load(out / 'dataset_indices.pt', weights_only=True), torch.arange(3))
    # Other applications still refuse --real_size 0.
    code, errors, _ = run_main('applications.propagate_to_images', ['--ckpt', world['ckpt'], '--real_data_path', data,
                                                                    '--real_size', 0, '--out', tmp_path / 'p'], capsys)
    assert code == 2 and '--real_size must be a power of two' in errors[0]
