"""--compile: compiled training steps equal eager ones; a failing compiler falls back with one warning."""
import functools

import pytest
import torch
from torch import nn

from tests.test_speed_flags import first_losses
from utils.compilation import CompiledView, compiled
from options import parse_training_options


def _failing_compile(*args, **kwargs):
    """A torch.compile whose result fails at the first call, as a backend without its C++ compiler does."""
    def run(*a, **k):
        raise RuntimeError('InductorError: no working C++ compiler found\nsecond line of the report')
    return run


@pytest.mark.slow
def test_compiled_training_steps_equal_eager(tiny_configs, one_thread, monkeypatch):
    # The whole step traced by the compiler (graph capture and autograd of generator, transformer
    # and loss); the 'aot_eager' backend skips generating C++, which costs minutes on a small CPU
    # (the generated kernels' numerics are checked on a small module below).
    monkeypatch.setattr(torch, 'compile', functools.partial(torch.compile, backend='aot_eager'))
    torch._dynamo.reset()
    argv = tiny_configs.stylegan2 + ['--exp-name', 'c']
    eager, _, eager_modules = first_losses(argv, steps=2)
    compiled_losses, _, modules = first_losses(argv + ['--compile'], steps=2)
    assert not any(isinstance(m, CompiledView) for m in eager_modules)  # off: the modules themselves
    assert all(isinstance(m, CompiledView) and not m.failed for m in modules)  # on: compiled, no fallback
    assert torch.isfinite(eager).all() and eager[:, 0].abs().min() > 0
    assert torch.allclose(compiled_losses, eager, rtol=1e-4, atol=1e-7), (compiled_losses, eager)


def test_generated_kernels_match_eager_on_a_small_module(one_thread):
    # The real backend (C++ on the CPU) on the generator's modulated convolution: output and the
    # gradients of input and style equal eager's.
    from models.layers import ModulatedConv2d
    torch._dynamo.reset()
    torch.manual_seed(0)
    conv = ModulatedConv2d(3, 4, 3, style_dim=5)
    view = compiled(conv, 'modulated convolution')
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    style = torch.randn(2, 5, requires_grad=True)
    expected = conv(x, style)
    expected_grads = torch.autograd.grad(expected.square().sum(), (x, style))
    result = view(x, style)
    if view.failed:
        pytest.skip('torch.compile is unusable on this machine (its warning was printed)')
    result_grads = torch.autograd.grad(result.square().sum(), (x, style))
    assert expected.abs().max() > 0.1
    assert torch.allclose(result, expected, atol=1e-5)
    for got, want in zip(result_grads, expected_grads):
        assert torch.allclose(got, want, atol=1e-4)


def test_failing_compiler_warns_once_per_module_and_training_goes_on(tmp_path, train_in_process, tiny_configs,
                                                                   monkeypatch):
    monkeypatch.setattr(torch, 'compile', _failing_compile)
    argv = tiny_configs.stylegan2 + ['--exp-name', 'f', '--results', str(tmp_path), '--iter', '3', '--compile',
                                     '--vis_every', '100', '--ckpt_every', '3']
    result = train_in_process(argv)
    assert result.code == 0, result.stderr[-3000:]
    warnings = [line for line in result.stderr.splitlines() if line.startswith('warning: --compile')]
    # One line per module over three iterations, naming the compiler's first line only.
    assert len(warnings) == 3, result.stderr[-3000:]
    for name, line in zip(('generator', 'spatial transformer', 'perceptual loss'), warnings):
        assert name in line and 'no working C++ compiler found' in line and 'second line' not in line
    assert 'Traceback' not in result.stderr
    assert (tmp_path / 'f' / 'checkpoints' / '0000003.pt').is_file()


def test_compile_unavailable_at_wrap_time_warns_and_returns_a_working_view(monkeypatch, capsys):
    def refuse(*args, **kwargs):
        raise RuntimeError('torch.compile is not supported on this Python')
    monkeypatch.setattr(torch, 'compile', refuse)
    net = nn.Linear(3, 2)
    view = compiled(net, 'net')
    assert view.failed and 'not supported on this Python' in capsys.readouterr().err
    x = torch.randn(4, 3)
    assert torch.equal(view(x), net(x))
    assert view.out_features == 2 and list(view.parameters()) == list(net.parameters())  # reads through
    monkeypatch.delattr(torch, 'compile')
    assert compiled(net, 'net') is net  # a torch without torch.compile: the module itself, with a warning
    assert 'has no torch.compile' in capsys.readouterr().err


def test_the_models_own_errors_are_raised_not_taken_for_a_compiler_failure(monkeypatch, capsys):
    class Picky(nn.Module):
        def forward(self, x):
            if x.shape[1] != 3:
                raise ValueError('expected 3 channels')
            return x * 2

    monkeypatch.setattr(torch, 'compile', _failing_compile)
    view = compiled(Picky(), 'picky')
    with pytest.raises(ValueError, match='expected 3 channels'):
        view(torch.zeros(1, 4))
    assert not view.failed and capsys.readouterr().err == ''
    assert compiled(view.module, 'picky', enabled=False) is view.module


def test_compile_flag_is_parsed_off_by_default(tiny_configs):
    argv = tiny_configs.stylegan2 + ['--exp-name', 'c']
    assert parse_training_options(argv, save=False).compile is False
    assert parse_training_options(argv + ['--compile'], save=False).compile is True
