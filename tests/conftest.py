"""Shared fixtures of the trainer tests: tiny configurations, running train.py, reading its logs."""
import contextlib
import glob
import io
import os
import subprocess
import sys
import traceback
from types import SimpleNamespace

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCHER_VARIABLES = ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT')

# Small enough for a CPU test: a few tenths of a second per iteration.
TINY_SYNTHETIC = ['--generator', 'synthetic', '--device', 'cpu', '--gen_size', '32', '--real_size', '32',
                  '--flow_size', '16', '--stn_channel_multiplier', '0.125', '--stn_max_channels', '16',
                  '--batch', '2', '--n_pca', '200', '--n_mean', '8', '--n_sample', '4', '--vis_batch_size', '8',
                  '--synthetic_eval_images', '8', '--synthetic_num_images', '16']
# Added to TINY_SYNTHETIC when clustering (--num_heads > 1; a single head refuses it).
TINY_KMEANS = ['--kmeans_candidates', '16']
# A random-weight StyleGAN2 (no --ckpt): 16 x 16 images, 6 W+ entries.
TINY_STYLEGAN2 = ['--generator', 'stylegan2', '--device', 'cpu', '--gen_size', '16', '--real_size', '16',
                  '--flow_size', '16', '--dim_latent', '32', '--n_mlp', '2', '--gen_channel_multiplier', '1',
                  '--inject', '2', '--loss_fn', 'l2', '--dataset_mode', 'lmdb', '--stn_channel_multiplier',
                  '0.125', '--stn_max_channels', '16', '--batch', '2', '--n_pca', '200', '--n_mean', '4',
                  '--n_sample', '4', '--vis_batch_size', '4']


@pytest.fixture(scope='session')
def tiny_configs():
    """Command-line flags of the tiny synthetic and StyleGAN2 configurations (fresh lists)."""
    return SimpleNamespace(synthetic=list(TINY_SYNTHETIC), stylegan2=list(TINY_STYLEGAN2), kmeans=list(TINY_KMEANS))


def subprocess_env(extra=None):
    """The environment for a child process of a test: no launcher variables, one thread."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}
    env.update(OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', PYTHONUNBUFFERED='1')
    env.update(extra or {})
    return env


@pytest.fixture
def one_thread():
    """Run the test with one torch thread: on a busy machine, extra threads only wait for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope='session')
def train_process():
    """``start(argv, env=None, **popen_kwargs)`` -> Popen of ``python train.py argv`` in the repo,
    one thread per process, no launcher variables inherited. ``run(argv, env=None, timeout=300)``
    runs it to the end and returns the CompletedProcess (text output)."""
    def start(argv, env=None, module_args=(), **popen_kwargs):
        command = [sys.executable, *module_args, 'train.py', *map(str, argv)]
        return subprocess.Popen(command, cwd=REPO, env=subprocess_env(env), text=True, **popen_kwargs)

    def run(argv, env=None, timeout=300, module_args=()):
        command = [sys.executable, *module_args, 'train.py', *map(str, argv)]
        return subprocess.run(command, cwd=REPO, env=subprocess_env(env), text=True, capture_output=True,
                              timeout=timeout)
    return SimpleNamespace(start=start, run=run, env=subprocess_env)


@pytest.fixture(scope='session')
def train_in_process():
    """``run(argv)`` -> (exit code, stdout, stderr) of ``train.main()`` in this process.

    An uncaught exception gives status 1 with its traceback in stderr, as in a
    real process. One torch thread while it runs; sys.argv and the thread count are
    restored afterwards (the trainer restores the SIGINT/SIGTERM handlers it installs).
    """
    import train

    def run(argv):
        saved_argv, threads = sys.argv, torch.get_num_threads()
        removed = {name: os.environ.pop(name) for name in LAUNCHER_VARIABLES if name in os.environ}
        out, err = io.StringIO(), io.StringIO()
        sys.argv = ['train.py', *map(str, argv)]
        torch.set_num_threads(1)
        code = 0
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                train.main()
        except SystemExit as e:
            code = 0 if e.code is None else e.code
        except Exception:  # what the interpreter would do: a traceback and status 1
            code = 1
            err.write(traceback.format_exc())
        finally:
            sys.argv = saved_argv
            torch.set_num_threads(threads)
            os.environ.update(removed)
        return SimpleNamespace(code=code, stdout=out.getvalue(), stderr=err.getvalue())
    return run


@pytest.fixture
def train_refused(train_in_process, tmp_path):
    """``check(flags, phrase)``: ``train.py --exp-name x --results tmp_path *flags`` exits 2 with one
    ``train.py: error:`` line holding ``phrase``, and writes no experiment folder. Returns that line."""
    def check(flags, phrase):
        result = train_in_process(['--exp-name', 'x', '--results', str(tmp_path), *flags])
        assert result.code == 2
        message = result.stderr.strip().splitlines()[-1]
        assert message.startswith('train.py: error:') and phrase in message, message
        assert not (tmp_path / 'x').exists()
        return message
    return check


@pytest.fixture(scope='session')
def read_events():
    """``read(exp_dir, single=True)`` -> the experiment's only TensorBoard event file (with
    ``single=False``: all of them, as TensorBoard shows the folder), read back:
    ``.tags`` (the accumulator's tag lists), ``.scalars(tag)`` -> {step: value},
    ``.image_steps(tag)`` -> [step, ...]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def read(exp_dir, single=True):
        files = glob.glob(os.path.join(str(exp_dir), 'events.out.tfevents.*'))
        if single:
            assert len(files) == 1, f'expected one event file in {exp_dir}, found {files}'
        # A folder is read as TensorBoard shows it: several runs' files in order, purges applied.
        events = EventAccumulator(files[0] if single else str(exp_dir), size_guidance={'scalars': 0, 'images': 0})
        events.Reload()
        return SimpleNamespace(
            tags=events.Tags(),
            scalars=lambda tag: {event.step: event.value for event in events.Scalars(tag)},
            image_steps=lambda tag: [event.step for event in events.Images(tag)])
    return read
