"""The tiered option system: tiers, component flags, two-pass parse, validation, saved files.

The real registries are emptied for each test and filled with the small test
components below, so these tests do not depend on the real components.
"""
import argparse
import json
import math
import os

import pytest

from datasets.modes import DATASET_MODES
from models.generators import GENERATORS
from models.perceptual import PERCEPTUAL_LOSSES
from utils.errors import UserError
from options import (base_eval_argparse, base_training_argparse, build_training_parser,
                           load_options_json, parse_eval_options, parse_training_options,
                           resolve_generator_name, save_options)
from options import components as component_module
from utils.argparse_tools import explicitly_given


class GeneratorWithItsOwnData:
    """Like the synthetic generator: own flag, own loss and dataset mode, n_latent, validate."""

    @staticmethod
    def modify_commandline_options(parser, is_train):
        parser.add_argument('--test_gen_width', type=int, default=4, help='width of the test generator')
        parser.set_defaults(loss_fn='test_loss', dataset_mode='test_mode_b')
        return parser

    @staticmethod
    def n_latent(opt):
        return 2 * int(math.log2(opt.gen_size)) - 2

    @staticmethod
    def validate(opt, parser):
        if opt.test_gen_width > 100:
            parser.error('--test_gen_width must be at most 100')


class PlainGenerator:
    """No modifier, no n_latent: the inject range cannot be checked."""


class LossRaisingTvWeight:
    @staticmethod
    def modify_commandline_options(parser, is_train):
        parser.add_argument('--test_loss_layers', type=int, default=3, help='layers of the test loss')
        parser.set_defaults(tv_weight=2500.0)
        return parser


class ModeA:
    @staticmethod
    def modify_commandline_options(parser, is_train):
        parser.add_argument('--test_a_root', type=str, default='a', help='root of test mode a')
        return parser


class ModeB:
    @staticmethod
    def modify_commandline_options(parser, is_train):
        if is_train:
            parser.add_argument('--test_b_frames', type=int, default=3, help='frames of test mode b')
        else:
            parser.add_argument('--test_b_split', type=str, default='val', help='split of test mode b')
        return parser


TEST_COMPONENTS = {
    GENERATORS: {'test_gen': GeneratorWithItsOwnData, 'test_gen_plain': PlainGenerator},
    PERCEPTUAL_LOSSES: {'test_loss': LossRaisingTvWeight},
    DATASET_MODES: {'test_mode_a': ModeA, 'test_mode_b': ModeB},
}


@pytest.fixture(autouse=True)
def test_components(monkeypatch):
    """Only the test components are registered (restored after each test)."""
    for registry, items in TEST_COMPONENTS.items():
        monkeypatch.setattr(registry, '_items', dict(items))
        monkeypatch.setattr(registry, '_scanned', True)
    for name in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT'):
        monkeypatch.delenv(name, raising=False)


def train_args(tmp_path, *extra):
    return ['--exp-name', 'exp', '--results', str(tmp_path)] + list(extra)


def parse_error(capsys, parse):
    """Run ``parse``; it must end with exit status 2. Returns stderr."""
    with pytest.raises(SystemExit) as info:
        parse()
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert 'Traceback' not in err
    return err


def option_strings(parser):
    return {s for action in parser._actions for s in action.option_strings}


# ---------------------------------------------------------------- tiers

def test_base_flags_in_both_tiers_phase_flags_in_their_own():
    train, evaluate = option_strings(base_training_argparse()), option_strings(base_eval_argparse())
    for flag in ('--real_data_path', '--real_size', '--batch', '--seed', '--device', '--dataset_mode',
                 '--num_workers', '--debug', '--padding_mode', '--transform', '--flow_size', '--ckpt'):
        assert flag in train and flag in evaluate, flag
    for flag in ('--exp-name', '--iter', '--stn_lr', '--generator', '--loss_fn', '--inject', '--tm'):
        assert flag in train and flag not in evaluate, flag
    for flag in ('--iters', '--out', '--override', '--no_flip_inference', '--output_resolution'):
        assert flag in evaluate and flag not in train, flag


def test_phase_defaults_differ_where_the_phases_do():
    train, evaluate = base_training_argparse(), base_eval_argparse()
    assert (train.get_default('batch'), evaluate.get_default('batch')) == (5, 40)
    assert (train.get_default('padding_mode'), evaluate.get_default('padding_mode')) == ('reflection', 'border')
    assert train.get_default('flow_size') == 128 and evaluate.get_default('flow_size') is None
    assert train.get_default('transform') == ['similarity', 'flow'] and evaluate.get_default('transform') is None
    assert evaluate.get_default('out') == 'visuals' and evaluate.get_default('iters') == 1


ORIGINAL_TRAINING_DEFAULTS = {
    'ckpt': None, 'load_G_only': False, 'dim_latent': 512, 'n_mlp': 8, 'gen_channel_multiplier': 2,
    'num_fp16_res': 0, 'results': 'results', 'seed': 0, 'real_data_path': None, 'real_size': 256,
    'gen_size': 256, 'iter': 800000, 'batch': 5, 'debug': False, 'inject': 5, 'ndirs': 1,
    'anneal_psi': 150000, 'anneal_fn': 'cosine', 'loss_fn': 'vgg_ssl', 'tv_weight': 1000.0,
    'flow_identity_weight': 1.0, 'freeze_ll': False, 'sample_from_full_res': False, 'num_heads': 1,
    'flips': False, 'transform': ['similarity', 'flow'], 'padding_mode': 'reflection', 'stn_lr': 0.001,
    'll_lr': 0.01, 'flow_size': 128, 'stn_channel_multiplier': 0.5, 'vis_every': 5000,
    'ckpt_every': 50000, 'log_every': 25, 'n_mean': 8000, 'n_sample': 64, 'vis_batch_size': 250,
    'random_reals': False, 'period': 37500, 'decay': 0.9, 'tm': 2,
    'device': 'auto', 'generator': None, 'dataset_mode': 'lmdb', 'num_workers': 2,
}


def test_original_trainer_flags_keep_names_and_defaults(capsys):
    parser = base_training_argparse()
    flags = option_strings(parser)
    for dest, default in ORIGINAL_TRAINING_DEFAULTS.items():
        assert f'--{dest}' in flags, dest
        assert parser.get_default(dest) == default, dest
    assert '--exp-name' in flags
    err = parse_error(capsys, lambda: parser.parse_args([]))
    assert '--exp-name' in err


# ---------------------------------------------------------------- components and help

def test_registries_are_the_component_packages():
    assert component_module.registry_for('generator') is GENERATORS
    assert component_module.registry_for('loss_fn') is PERCEPTUAL_LOSSES
    assert component_module.registry_for('dataset_mode') is DATASET_MODES


def test_help_lists_the_chosen_components_flags(capsys, tmp_path):
    with pytest.raises(SystemExit) as info:
        parse_training_options(['--help', '--generator', 'test_gen'])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for flag in ('--exp-name', '--stn_lr', '--test_gen_width', '--test_loss_layers', '--test_b_frames'):
        assert flag in out, flag
    assert '--test_a_root' not in out
    assert 'test_gen, test_gen_plain' in out  # the registered generators are listed
    assert not os.listdir(tmp_path)

    with pytest.raises(SystemExit) as info:
        parse_training_options(['--generator', 'test_gen', '--dataset_mode', 'test_mode_a', '-h'])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert '--test_a_root' in out and '--test_b_frames' not in out


def test_help_without_choices_uses_the_default_generator(capsys, monkeypatch):
    monkeypatch.setattr(component_module, 'GENERATOR_WITHOUT_CKPT', 'test_gen')
    with pytest.raises(SystemExit) as info:
        parse_training_options(['--help'])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert '--test_gen_width' in out and '--test_b_frames' in out


def test_every_flag_has_help_text():
    parser, _ = build_training_parser(['--generator', 'test_gen'])
    for action in parser._actions:
        assert action.help and action.help.strip(), action.dest
    parser = base_eval_argparse()
    for action in parser._actions:
        assert action.help and action.help.strip(), action.dest


def test_generator_default_depends_on_ckpt(monkeypatch, tmp_path):
    assert resolve_generator_name(None, None) == 'synthetic'
    assert resolve_generator_name(None, 'cat') == 'stylegan2'
    assert resolve_generator_name('test_gen', 'cat') == 'test_gen'
    monkeypatch.setattr(component_module, 'GENERATOR_WITHOUT_CKPT', 'test_gen')
    monkeypatch.setattr(component_module, 'GENERATOR_WITH_CKPT', 'test_gen_plain')
    opt = parse_training_options(train_args(tmp_path), save=False)
    assert opt.generator == 'test_gen' and opt.test_gen_width == 4
    opt = parse_training_options(train_args(tmp_path, '--ckpt', 'g.pt', '--loss_fn', 'test_loss',
                                            '--dataset_mode', 'test_mode_a'), save=False)
    assert opt.generator == 'test_gen_plain' and not hasattr(opt, 'test_gen_width')


def test_component_changes_other_defaults(tmp_path):
    opt = parse_training_options(train_args(tmp_path, '--generator', 'test_gen'))
    assert opt.loss_fn == 'test_loss' and opt.dataset_mode == 'test_mode_b'
    assert opt.tv_weight == 2500.0 and opt.test_loss_layers == 3
    lines = (tmp_path / 'exp' / 'opt.txt').read_text().splitlines()
    assert 'tv_weight: 2500.0' in lines  # the component's default is the default
    assert 'loss_fn: test_loss' in lines


def test_two_pass_generator_switches_dataset_mode(capsys, tmp_path):
    opt = parse_training_options(train_args(tmp_path, '--generator', 'test_gen', '--test_b_frames', '7'),
                                 save=False)
    assert opt.dataset_mode == 'test_mode_b' and opt.test_b_frames == 7
    assert not hasattr(opt, 'test_a_root')
    opt = parse_training_options(train_args(tmp_path, '--generator', 'test_gen', '--dataset_mode', 'test_mode_a',
                                            '--test_a_root', 'r'), save=False)
    assert opt.dataset_mode == 'test_mode_a' and opt.test_a_root == 'r'
    err = parse_error(capsys, lambda: parse_training_options(
        train_args(tmp_path, '--generator', 'test_gen', '--dataset_mode', 'test_mode_a', '--test_b_frames', '7'),
        save=False))
    assert 'unrecognized arguments: --test_b_frames 7' in err


@pytest.mark.parametrize('selector, kind, known', [
    ('--generator', 'generator', 'test_gen, test_gen_plain'),
    ('--loss_fn', 'perceptual loss', 'test_loss'),
    ('--dataset_mode', 'dataset mode', 'test_mode_a, test_mode_b'),
])
def test_unknown_component_is_an_error_listing_names(capsys, tmp_path, selector, kind, known):
    argv = train_args(tmp_path, '--generator', 'test_gen', selector, 'nope')
    err = parse_error(capsys, lambda: parse_training_options(argv))
    assert f"unknown {kind} 'nope'" in err and known in err
    assert not os.path.exists(tmp_path / 'exp')


def test_unknown_component_in_help_is_an_error(capsys):
    err = parse_error(capsys, lambda: parse_training_options(['--help', '--generator', 'nope']))
    assert "unknown generator 'nope'" in err


def test_selector_without_value_is_an_error_with_full_usage(capsys, tmp_path):
    err = parse_error(capsys, lambda: parse_training_options(train_args(tmp_path, '--generator')))
    assert 'argument --generator: expected one argument' in err
    assert '--stn_lr' in err and '--random_reals' in err  # the whole parser's usage


def test_explicitly_given_sees_only_typed_options():
    parser, _ = build_training_parser(['--generator', 'test_gen'])
    given = explicitly_given(parser, ['--exp-name', 'e', '--generator', 'test_gen', '--tv_weight', '1000',
                                      '--flips', '--test_gen_width=5'])
    assert given == {'exp_name', 'generator', 'tv_weight', 'flips', 'test_gen_width'}


# ---------------------------------------------------------------- validation

@pytest.mark.parametrize('extra, message', [
    (['--batch', '0'], '--batch must be at least 1 (got 0)'),
    (['--iter', '0'], '--iter must be at least 1'),
    (['--num_heads', '0'], '--num_heads must be at least 1'),
    (['--stn_lr', '-0.1'], '--stn_lr must be at least 0'),
    (['--ll_lr', '-1'], '--ll_lr must be at least 0'),
    (['--tv_weight', '-1'], '--tv_weight must be at least 0'),
    (['--tv_weight', 'nan'], '--tv_weight must be a finite number'),
    (['--flow_size', '96'], '--flow_size (96) must be a power of two'),
    (['--flow_size', '512'], '--flow_size (512) must not exceed --real_size (256)'),
    (['--gen_size', '64'], '--flow_size (128) must not exceed --gen_size (64)'),
    (['--real_size', '100'], '--real_size must be a power of two of at least 8'),
    (['--gen_size', '4', '--flow_size', '4'], '--gen_size must be a power of two of at least 8'),
    (['--ndirs', '0'], '--ndirs must be at least 1'),
    (['--ndirs', '513'], '--ndirs (513) must not exceed --dim_latent (512)'),
    (['--inject', '0'], '--inject must be in [1, 14]'),
    (['--inject', '15'], '--inject must be in [1, 14]'),
    (['--gen_size', '128', '--inject', '13'], '--inject must be in [1, 12]'),
    (['--decay', '0'], '--decay must be in (0, 1]'),
    (['--decay', '1.5'], '--decay must be in (0, 1]'),
    (['--tm', '0'], '--tm must be at least 1'),
    (['--period', '0.5'], '--period must be at least 1'),
    (['--transform', 'similarity', '--tv_weight', '5'], 'add flow to --transform or drop --tv_weight'),
    (['--transform', 'similarity', '--flow_identity_weight', '0.5'], 'drop --flow_identity_weight'),
    (['--transform', 'flow', 'flow'], 'at most one flow stage, and last'),
    (['--transform', 'flow', 'similarity'], 'at most one flow stage, and last'),
    (['--load_G_only'], '--load_G_only needs --ckpt'),
    (['--exp-name', '../elsewhere'], '--exp-name must be a name inside --results'),
    (['--num_heads', '3', '--kmeans_candidates', '2'], '--kmeans_candidates (2) must be at least --num_heads'),
    (['--test_gen_width', '1000'], '--test_gen_width must be at most 100'),  # the component's own check
])
def test_impossible_options_exit_2_with_a_message(capsys, tmp_path, extra, message):
    argv = train_args(tmp_path, '--generator', 'test_gen', *extra)
    err = parse_error(capsys, lambda: parse_training_options(argv))
    assert message in err
    assert 'usage:' in err
    assert not os.path.exists(tmp_path / 'exp')


def test_all_problems_are_reported_together(capsys, tmp_path):
    argv = train_args(tmp_path, '--generator', 'test_gen', '--batch', '0', '--tm', '0')
    err = parse_error(capsys, lambda: parse_training_options(argv))
    assert '--batch must be at least 1' in err and '--tm must be at least 1' in err


def test_debug_averages_200_images_unless_told(tmp_path, capsys):
    opt = parse_training_options(train_args(tmp_path, '--generator', 'test_gen', '--debug'))
    assert opt.n_mean == 200  # the default 8000 made a debug run's start-up take minutes
    assert 'n_mean: 200  [default: 8000]  (set to 200 by --debug)' in (tmp_path / 'exp' / 'opt.txt').read_text()
    opt = parse_training_options(train_args(tmp_path, '--generator', 'test_gen', '--debug', '--n_mean', '5000'),
                                 save=False)
    assert opt.n_mean == 5000  # given: used
    assert parse_training_options(train_args(tmp_path, '--generator', 'test_gen'), save=False).n_mean == 8000


def test_inject_range_is_skipped_without_n_latent(tmp_path):
    opt = parse_training_options(train_args(tmp_path, '--generator', 'test_gen_plain', '--loss_fn', 'test_loss',
                                            '--dataset_mode', 'test_mode_a', '--inject', '50'), save=False)
    assert opt.inject == 50


def test_similarity_only_zeroes_flow_weights_left_at_default(tmp_path, capsys):
    opt = parse_training_options(train_args(tmp_path, '--generator', 'test_gen', '--transform', 'similarity'))
    assert opt.transform == ['similarity']
    assert opt.tv_weight == 0.0 and opt.flow_identity_weight == 0.0
    printed = capsys.readouterr().out
    lines = (tmp_path / 'exp' / 'opt.txt').read_text().splitlines()
    expected = 'tv_weight: 0.0  [default: 2500.0]  (set to 0: --transform has no flow)'
    assert expected in lines and expected in printed
    assert 'flow_identity_weight: 0.0  [default: 1.0]  (set to 0: --transform has no flow)' in lines
    # An explicit 0 is no conflict and needs no note.
    opt = parse_training_options(train_args(tmp_path, '--generator', 'test_gen', '--transform', 'similarity',
                                            '--tv_weight', '0', '--flow_identity_weight', '0'), save=False)
    assert opt.tv_weight == 0.0 and 'set to 0' not in capsys.readouterr().out


# ---------------------------------------------------------------- saved options

def test_opt_txt_and_json_describe_every_option(tmp_path, capsys):
    opt = parse_training_options(train_args(tmp_path, '--generator', 'test_gen', '--batch', '3',
                                            '--transform', 'flow', '--stn_lr', '0.002'))
    folder = tmp_path / 'exp'
    assert sorted(os.listdir(folder)) == ['opt.json', 'opt.txt']  # no temporary files left
    lines = [line for line in (folder / 'opt.txt').read_text().splitlines() if not line.startswith('---')]
    names = [line.split(':', 1)[0] for line in lines]
    assert names == sorted(vars(opt))
    assert 'batch: 3  [default: 5]' in lines
    assert 'stn_lr: 0.002  [default: 0.001]' in lines
    assert "transform: ['flow']  [default: ['similarity', 'flow']]" in lines
    assert 'seed: 0' in lines
    assert 'generator: test_gen  [default: synthetic]' in lines  # the rule's choice without --ckpt
    assert f'results: {tmp_path}  [default: results]' in lines

    document = json.loads((folder / 'opt.json').read_text())
    assert document['format_version'] == 1
    assert document['options']['batch'] == 3 and document['options']['transform'] == ['flow']
    loaded = load_options_json(folder / 'opt.json')
    assert isinstance(loaded, argparse.Namespace)
    assert vars(loaded) == vars(opt)


def test_saved_options_rebuild_the_same_configuration(tmp_path):
    opt = parse_training_options(train_args(tmp_path, '--generator', 'test_gen', '--num_heads', '2',
                                            '--flips', '--test_gen_width', '9'))
    loaded = load_options_json(tmp_path / 'exp' / 'opt.json')
    assert loaded == opt
    assert loaded.num_heads == 2 and loaded.flips is True and loaded.test_gen_width == 9


def test_only_the_main_process_writes_and_prints(tmp_path, capsys, monkeypatch):
    for name, value in (('RANK', '1'), ('WORLD_SIZE', '2'), ('LOCAL_RANK', '1'),
                        ('MASTER_ADDR', '127.0.0.1'), ('MASTER_PORT', '29500')):
        monkeypatch.setenv(name, value)
    opt = parse_training_options(train_args(tmp_path, '--generator', 'test_gen'))
    assert opt.exp_name == 'exp'
    assert not os.path.exists(tmp_path / 'exp')
    assert capsys.readouterr().out == ''


def test_a_failed_save_leaves_earlier_files_intact(tmp_path):
    parser = base_training_argparse()
    good = argparse.Namespace(batch=3, seed=1)
    save_options(good, parser, str(tmp_path))
    before = {name: (tmp_path / name).read_text() for name in ('opt.txt', 'opt.json')}
    with pytest.raises(ValueError, match="option 'bad'"):
        save_options(argparse.Namespace(batch=4, bad=object()), parser, str(tmp_path))
    with pytest.raises(ValueError):
        save_options(argparse.Namespace(batch=4, weight=float('inf')), parser, str(tmp_path))
    assert {name: (tmp_path / name).read_text() for name in ('opt.txt', 'opt.json')} == before
    assert sorted(os.listdir(tmp_path)) == ['opt.json', 'opt.txt']


def test_unwritable_results_folder_is_a_user_error(tmp_path):
    blocker = tmp_path / 'file'
    blocker.write_text('not a folder')
    with pytest.raises(UserError, match='cannot save the options'):
        save_options(argparse.Namespace(batch=1), base_training_argparse(), str(blocker / 'exp'))


def test_load_options_json_rejects_missing_and_foreign_files(tmp_path):
    with pytest.raises(UserError, match='does not exist'):
        load_options_json(tmp_path / 'missing.json')
    (tmp_path / 'broken.json').write_text('{not json')
    with pytest.raises(UserError, match='cannot read'):
        load_options_json(tmp_path / 'broken.json')
    (tmp_path / 'other.json').write_text('{"batch": 3}')
    with pytest.raises(UserError, match='not an options file'):
        load_options_json(tmp_path / 'other.json')


# ---------------------------------------------------------------- evaluation

def eval_parser():
    parser = base_eval_argparse()
    parser.add_argument('--app_threshold', type=float, default=0.1, help='an application flag')
    return parser


def test_eval_parse_applies_dataset_mode_options(capsys):
    opt = parse_eval_options(eval_parser(), ['--ckpt', 'cat', '--dataset_mode', 'test_mode_b'], verbose=False)
    assert opt.ckpt == 'cat' and opt.test_b_split == 'val' and not hasattr(opt, 'test_b_frames')
    assert opt.app_threshold == 0.1 and opt.batch == 40 and opt.padding_mode == 'border'
    assert opt.flow_size is None and opt.transform is None and opt.num_heads is None
    assert capsys.readouterr().out == ''
    opt = parse_eval_options(eval_parser(), ['--ckpt', 'c.pt', '--dataset_mode', 'test_mode_a',
                                             '--test_a_root', 'x', '--flow_size', '64'])
    assert opt.test_a_root == 'x' and opt.flow_size == 64
    assert 'flow_size: 64  [default: None]' in capsys.readouterr().out


def test_eval_help_lists_application_and_dataset_flags(capsys):
    with pytest.raises(SystemExit) as info:
        parse_eval_options(eval_parser(), ['-h', '--dataset_mode', 'test_mode_b'])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for flag in ('--ckpt', '--iters', '--app_threshold', '--test_b_split', '--no_flip_inference'):
        assert flag in out, flag


@pytest.mark.parametrize('extra, message', [
    ([], 'the following arguments are required: --ckpt'),
    (['--ckpt', 'cat', '--flow_size', '100'], '--flow_size (100) must be a power of two'),
    (['--ckpt', 'cat', '--flow_size', '512'], '--flow_size (512) must not exceed --real_size (256)'),
    (['--ckpt', 'cat', '--iters', '0'], '--iters must be at least 1'),
    (['--ckpt', 'cat', '--num_heads', '0'], '--num_heads must be at least 1'),
    (['--ckpt', 'cat', '--dataset_mode', 'nope'], "unknown dataset mode 'nope'"),
])
def test_eval_validation(capsys, extra, message):
    argv = ['--dataset_mode', 'test_mode_a'] + extra
    err = parse_error(capsys, lambda: parse_eval_options(eval_parser(), argv))
    assert message in err
