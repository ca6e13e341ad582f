"""utils.pretrained: names, downloads into the cache, test-time settings."""
import argparse
import os

import pytest

from tests.test_download import FileServer, closed_port_url
from utils import pretrained
from utils.download import DownloadError
from utils.errors import UserError

EXPECTED_NAMES = {'bicycle', 'car', 'cat', 'cat_ssl_mix6', 'celeba', 'cub', 'dog', 'horse', 'tvmonitor',
                  'simclr_vgg_phase150'}


def test_known_names_and_release_urls():
    assert set(pretrained.PRETRAINED_NAMES) == EXPECTED_NAMES
    assert pretrained.PRETRAINED_URLS['cat'] == 'http://efrosgans.eecs.berkeley.edu/gangealing/pretrained/cat.pt'


def test_existing_path_is_returned_unchanged(tmp_path):
    ckpt = tmp_path / 'mine.pt'
    ckpt.write_bytes(b'x')
    assert pretrained.resolve_checkpoint(str(ckpt)) == str(ckpt)


def test_unknown_name_and_missing_path_list_known_names(tmp_path):
    with pytest.raises(UserError) as info:
        pretrained.resolve_checkpoint('giraffe')
    assert 'giraffe' in str(info.value) and 'cat_ssl_mix6' in str(info.value)
    with pytest.raises(UserError) as info:
        pretrained.resolve_checkpoint(str(tmp_path / 'missing.pt'))
    assert 'does not exist' in str(info.value) and 'tvmonitor' in str(info.value)


def test_name_downloads_once_into_cache(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no ./pretrained folder here
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    payload = os.urandom(50_000)
    with FileServer({'/release/cat.pt': payload}) as server:
        monkeypatch.setitem(pretrained.PRETRAINED_URLS, 'cat', server.url('/release/cat.pt'))
        path = pretrained.resolve_checkpoint('cat', progress=False)
        assert path == str(tmp_path / 'torch_home' / 'hub' / 'checkpoints' / 'gangealing' / 'cat.pt')
        assert open(path, 'rb').read() == payload
        assert pretrained.resolve_checkpoint('cat', progress=False) == path
        assert len(server.requests) == 1

        cache = tmp_path / 'my_cache'
        other = pretrained.resolve_checkpoint('cat', cache_dir=str(cache), progress=False)
        assert other == str(cache / 'cat.pt') and open(other, 'rb').read() == payload


def test_original_pretrained_folder_is_used_when_present(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'pretrained').mkdir()
    (tmp_path / 'pretrained' / 'dog.pt').write_bytes(b'already here')
    monkeypatch.setitem(pretrained.PRETRAINED_URLS, 'dog', closed_port_url('/dog.pt'))
    assert pretrained.resolve_checkpoint('dog', progress=False) == os.path.join('pretrained', 'dog.pt')


def test_offline_error_names_url_and_place(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    url = closed_port_url('/release/horse.pt')
    monkeypatch.setitem(pretrained.PRETRAINED_URLS, 'horse', url)
    with pytest.raises(DownloadError) as info:
        pretrained.resolve_checkpoint('horse', cache_dir=str(tmp_path / 'cache'), progress=False)
    assert url in str(info.value) and str(tmp_path / 'cache' / 'horse.pt') in str(info.value)


def test_test_settings_applied_unless_override():
    assert pretrained.pretrained_test_settings('car')['num_heads'] == 4
    assert pretrained.pretrained_test_settings('cub') == {'padding_mode': 'border', 'iters': 1, 'num_heads': 1}
    assert pretrained.pretrained_test_settings('simclr_vgg_phase150') == {}
    assert pretrained.pretrained_test_settings('some/path.pt') == {}

    opt = argparse.Namespace(padding_mode='zeros', iters=7, num_heads=None, no_flip_inference=False, override=False)
    applied = pretrained.apply_test_settings(opt, 'bicycle')
    assert applied['iters'] == 3
    assert (opt.padding_mode, opt.iters, opt.num_heads) == ('reflection', 3, 1)

    opt = argparse.Namespace(padding_mode='zeros', iters=7, num_heads=None, no_flip_inference=False, override=True)
    assert pretrained.apply_test_settings(opt, 'bicycle') == {}
    assert (opt.padding_mode, opt.iters) == ('zeros', 7)
