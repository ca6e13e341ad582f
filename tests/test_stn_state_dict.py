"""Spatial transformer state dicts: the official t_ema layout, loading with and
without fixed buffers, and readable errors for weights of another configuration."""
import re

import pytest
import torch

from utils.errors import UserError
from models import get_stn
from models.spatial_transformers import describe_stn_config, infer_stn_config
from models.spatial_transformers import stn_from_state_dict
from tests.official_schema import official_modules

SMALL = dict(channel_multiplier=0.125, max_channels=32)


def official_stn_schemas():
    modules = official_modules()
    return {name: keys for name, keys in modules.items() if name.startswith('t_ema ')}


def parse_configuration(name):
    """'t_ema transform=[similarity,flow] flow_size=128 ...' -> get_stn arguments."""
    fields = dict(re.findall(r'(\w+)=(\S+)', name))
    return dict(transforms=fields['transform'].strip('[]').split(','),
                flow_size=int(fields['flow_size']), supersize=int(fields['supersize']),
                channel_multiplier=float(fields['channel_multiplier']),
                num_heads=int(fields['num_heads']))


def test_state_dicts_match_the_official_t_ema_schema():
    schemas = official_stn_schemas()
    assert len(schemas) == 3
    for name, expected in schemas.items():
        config = parse_configuration(name)
        stn = get_stn(**config)
        ours = {key: list(value.shape) for key, value in stn.state_dict().items()}
        assert list(ours) == list(expected), name
        assert ours == expected, name
        # The configuration can be read back from the official layout.
        inferred = infer_stn_config({k: torch.empty(v) for k, v in expected.items()})
        assert inferred == config


def make_pair(transforms=('similarity', 'flow'), num_heads=1, seed=0):
    torch.manual_seed(seed)
    stn = get_stn(list(transforms), flow_size=16, supersize=32, num_heads=num_heads, **SMALL)
    with torch.no_grad():
        for name, param in stn.named_parameters():
            if 'warp_head.linear' in name or 'warp_head.flow_out.2' in name:
                param.normal_(0, 0.05)
    return stn, get_stn(list(transforms), flow_size=16, supersize=32, num_heads=num_heads, **SMALL)


@pytest.mark.parametrize('drop_fixed_buffers', [False, True])
def test_loading_reproduces_outputs_with_or_without_fixed_buffers(drop_fixed_buffers):
    source, target = make_pair(num_heads=2)
    state = source.state_dict()
    fixed = ('kernel', 'kernel_horz', 'kernel_vert', 'one_hot', 'blur_filter')
    if drop_fixed_buffers:
        state = {k: v for k, v in state.items() if not k.endswith(fixed)}
        assert len(state) < len(source.state_dict())
    state['stns.0.warp_head.rebias'] = torch.zeros(8)  # an obsolete key of older checkpoints
    target.load_state_dict(state)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(target(images), source(images))
    assert torch.equal(target.stns[1].convs[1].conv2[0].kernel, source.stns[1].convs[1].conv2[0].kernel)


def test_distributed_prefix_is_accepted():
    source, target = make_pair(transforms=('similarity',))
    target.load_state_dict({'module.' + k: v for k, v in source.state_dict().items()})
    assert torch.equal(target.warp_head.linear.weight, source.warp_head.linear.weight)


def test_weights_of_another_configuration_name_both_configurations():
    torch.manual_seed(0)
    four_heads = get_stn(['similarity', 'flow'], flow_size=16, supersize=32, num_heads=4, **SMALL)
    one_head = get_stn(['similarity', 'flow'], flow_size=16, supersize=32, num_heads=1, **SMALL)
    with pytest.raises(UserError) as error:
        one_head.load_state_dict(four_heads.state_dict())
    theirs, ours = str(error.value).split('but this model has')
    # At flow_size 16 the channel multiplier cannot be read from the weights.
    assert "transforms=['similarity', 'flow'], flow_size=16, channel_multiplier=?, num_heads=4" in theirs
    assert describe_stn_config(one_head.config) in ours and 'num_heads=1' in ours

    similarity_only = get_stn('similarity', flow_size=32, supersize=32, **SMALL)
    with pytest.raises(UserError) as error:
        similarity_only.load_state_dict(one_head.state_dict())
    message = str(error.value)
    assert "transforms=['similarity', 'flow']" in message
    assert "transforms=['similarity'], flow_size=32" in message


def test_non_strict_loading_skips_missing_learned_tensors():
    source, target = make_pair()
    state = {k: v for k, v in source.state_dict().items() if 'final_conv' not in k}
    result = target.load_state_dict(state, strict=False)
    assert any('final_conv' in key for key in result.missing_keys)
    assert torch.equal(target.stns[0].warp_head.linear.weight, source.stns[0].warp_head.linear.weight)


def test_stn_from_state_dict_rebuilds_the_model():
    torch.manual_seed(0)
    source = get_stn(['similarity', 'flow'], flow_size=64, supersize=128, num_heads=2,
                     channel_multiplier=0.0625, max_channels=32)
    # max_channels is not part of the official layout, so it is passed along.
    rebuilt = stn_from_state_dict(source.state_dict(), max_channels=32)
    assert rebuilt.config == source.config
    images = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        assert torch.equal(rebuilt(images), source(images))


@pytest.fixture(scope='module')
def released_file(tmp_path_factory):
    from tests.released_layout import write_released_checkpoint
    return write_released_checkpoint(tmp_path_factory.mktemp('released') / 'cat.pt')


@pytest.mark.parametrize('real_size', [128, 256, 512])
def test_a_released_checkpoint_loads_at_every_released_size(released_file, real_size, one_thread):
    # At --real_size 128 the model reads its inputs at flow size and has no input
    # downsampler, yet the released file carries that downsampler's kernels.
    from applications.common.models import load_stn
    from options import base_eval_argparse, parse_eval_options

    path, source = released_file
    opt = parse_eval_options(base_eval_argparse(), ['--ckpt', path, '--real_size', str(real_size),
                                                    '--device', 'cpu', '--precision', 'fp32'])
    t = load_stn(opt, torch.device('cpu'))
    assert hasattr(t.stns[0], 'input_downsample') == (real_size > 128)
    for key, value in source.state_dict().items():
        if 'input_downsample' not in key:
            assert torch.equal(t.state_dict()[key], value), key
    torch.manual_seed(1)
    image = torch.rand(1, 3, real_size, real_size) * 2 - 1
    with torch.no_grad():
        congealed = t(image, output_resolution=real_size)
    assert congealed.shape == image.shape and torch.isfinite(congealed).all()
    if real_size == 256:  # the size it was saved at: the same model
        with torch.no_grad():
            assert torch.equal(congealed, source(image, output_resolution=real_size))


def test_keys_foreign_to_the_architecture_are_still_refused():
    stn = get_stn(['similarity', 'flow'], flow_size=16, supersize=16, **SMALL)
    state = dict(stn.state_dict())
    state['stns.0.input_downsample.kernel_horz'] = torch.ones(3, 1, 1, 4)  # harmless: a constant
    stn.load_state_dict(state)
    state['stns.0.input_downsample.weight'] = torch.ones(3)  # not a constant of any architecture
    with pytest.raises(UserError, match=r'unexpected: stns\.0\.input_downsample\.weight'):
        stn.load_state_dict(state)
