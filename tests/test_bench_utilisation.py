"""bench_train --utilisation's pieces: counted FLOPs, the measured matmul peak, the profile, the table."""
import torch

from benchmarks import bench_train


def test_flops_are_counted_for_forward_and_backward():
    weight = torch.randn(8, 16, requires_grad=True)
    x = torch.randn(4, 16)

    def step():
        (x @ weight.t()).sum().backward()
    # forward 2*4*16*8; backward: only the weight's gradient (x needs none), another 2*4*16*8
    assert bench_train.count_flops(step) == 2 * (2 * 4 * 16 * 8)

    image = torch.randn(1, 3, 8, 8, requires_grad=True)
    kernel = torch.randn(5, 3, 3, 3)

    def conv_step():
        torch.nn.functional.conv2d(image, kernel, padding=1).sum().backward()
    # forward 2 * (5*8*8 outputs) * (3*3*3 taps), backward: the input's gradient, the same again
    assert bench_train.count_flops(conv_step) == 2 * (2 * 5 * 8 * 8 * 27)


def test_matmul_peak_and_profile():
    device = torch.device('cpu')
    for precision in ('fp32', 'bf16'):
        assert bench_train.matmul_peak(device, precision, 64, repeats=2) > 1e6  # FLOP/s
    a = torch.randn(64, 64)
    rows = bench_train.profile_step(lambda: torch.mm(a, a).relu(), device, top=3)
    assert 1 <= len(rows) <= 3
    names = [name for name, _, _, _ in rows]
    assert 'aten::mm' in names
    assert all(calls >= 1 and ms >= 0 and 0 <= share <= 1 for _, calls, ms, share in rows)
    assert '| `aten::mm` |' in bench_train.format_profile(rows)


def test_utilisation_table():
    row = {'config': 'sg2-64', 'device': 'cpu', 'precision': 'bf16', 'seconds': 2.0, 'flops': 8e11,
           'achieved': 4e11, 'peak': 1e12, 'fraction': 0.4, 'rounds': 3, 'iters': 1, 'threads': 2}
    lines = bench_train.format_utilisation([row]).splitlines()
    assert lines[2] == '| StyleGAN2 64, flow 64, batch 5 | cpu | bf16 | 2 | 2.000 | 800.0 | 400.0 | 1000 | 40.0% |'
