"""The released GANgealing checkpoints: names, download locations, test-time settings.

``--ckpt cat`` (or any other known name) resolves to a local file, downloaded
once into a cache folder; a path is used as it is. A released model comes
with the test-time settings it was evaluated with, applied to the options
unless ``--override`` is given.
"""
import os

from utils.checkpoint import load_checkpoint
from utils.download import download_file, hub_checkpoint_dir
from utils.errors import UserError

RELEASE_URL = 'http://efrosgans.eecs.berkeley.edu/gangealing/pretrained'

# Released spatial-transformer checkpoints (with their generators) and the
# self-supervised VGG used by the vgg_ssl perceptual loss.
STN_MODELS = ('bicycle', 'car', 'cat', 'cat_ssl_mix6', 'celeba', 'cub', 'dog', 'horse', 'tvmonitor')
AUXILIARY_WEIGHTS = ('simclr_vgg_phase150',)
PRETRAINED_NAMES = STN_MODELS + AUXILIARY_WEIGHTS

PRETRAINED_URLS = {name: f'{RELEASE_URL}/{name}.pt' for name in PRETRAINED_NAMES}

# Expected sha256 per name; None: verified against the size the server announces.
PRETRAINED_SHA256 = {name: None for name in PRETRAINED_NAMES}

# Test-time settings of the released models: the STN's padding mode (the one
# used in training), how often the similarity transform is iterated (3 for the
# hard LSUN categories) and the number of cluster heads. Flip inference is
# left to --no_flip_inference, as in the original release.
_TEST_SETTINGS = {
    'bicycle':      dict(padding_mode='reflection', iters=3, num_heads=1),
    'car':          dict(padding_mode='reflection', iters=3, num_heads=4),
    'cat':          dict(padding_mode='border', iters=3, num_heads=1),
    'cat_ssl_mix6': dict(padding_mode='border', iters=3, num_heads=1),
    'celeba':       dict(padding_mode='border', iters=1, num_heads=1),
    'cub':          dict(padding_mode='border', iters=1, num_heads=1),
    'dog':          dict(padding_mode='border', iters=3, num_heads=1),
    'horse':        dict(padding_mode='reflection', iters=3, num_heads=4),
    'tvmonitor':    dict(padding_mode='reflection', iters=3, num_heads=1),
}

LEGACY_FOLDER = 'pretrained'  # where the original code kept downloads (relative to the working folder)


def is_pretrained_name(name):
    """True when ``name`` is one of PRETRAINED_NAMES."""
    return name in PRETRAINED_URLS


def default_cache_path(name):
    """Where a released file is cached when no cache folder is given:
    ``<torch hub dir>/checkpoints/gangealing/<name>.pt``, except the SSL VGG,
    which shares ``<torch hub dir>/checkpoints/simclr_vgg_phase150.pt`` with
    the perceptual loss's own lookup."""
    if name in AUXILIARY_WEIGHTS:
        return os.path.join(hub_checkpoint_dir(), f'{name}.pt')
    return os.path.join(hub_checkpoint_dir(), 'gangealing', f'{name}.pt')


def _looks_like_path(text):
    return os.sep in text or (os.altsep and os.altsep in text) or text.endswith(('.pt', '.pth', '.pkl'))


def resolve_checkpoint(name_or_path, cache_dir=None, progress=True):
    """A local checkpoint file for a path or a released model's name.

    Args:
        name_or_path: an existing file, or one of PRETRAINED_NAMES.
        cache_dir: folder for downloads (``<cache_dir>/<name>.pt``); default
            ``./pretrained/<name>.pt`` when that file exists (the original
            code's layout), else ``default_cache_path(name)``.
        progress: show a download progress bar.
    Returns:
        The path of the checkpoint file.
    Raises:
        UserError: neither an existing file nor a known name (lists the names).
        DownloadError: the download failed; names the URL and where to put
            the file by hand.
    """
    name_or_path = os.fspath(name_or_path)
    if os.path.isfile(name_or_path):
        return name_or_path
    if not is_pretrained_name(name_or_path):
        known = ', '.join(PRETRAINED_NAMES)
        if _looks_like_path(name_or_path) or os.path.isdir(name_or_path):
            raise UserError(f"checkpoint file '{name_or_path}' does not exist; give an existing file "
                            f"or a released model name ({known})")
        raise UserError(f"'{name_or_path}' is neither a checkpoint file nor a released model; "
                        f"known names: {known}")
    name = name_or_path
    if cache_dir is not None:
        dest = os.path.join(cache_dir, f'{name}.pt')
    else:
        legacy = os.path.join(LEGACY_FOLDER, f'{name}.pt')
        dest = legacy if os.path.isfile(legacy) else default_cache_path(name)
    return download_file(PRETRAINED_URLS[name], dest, sha256=PRETRAINED_SHA256[name], progress=progress)


def pretrained_test_settings(name):
    """The test-time settings of released model ``name`` as {option: value}
    (empty for names without settings, such as the SSL VGG or a path)."""
    return dict(_TEST_SETTINGS.get(name, {}))


def apply_test_settings(opt, name):
    """Set a released model's test-time settings on ``opt`` unless ``opt.override``.

    Args:
        opt: an options namespace (evaluation options).
        name: the ``--ckpt`` value; paths and unknown names change nothing.
    Returns:
        The {option: value} dict that was applied (empty when none was).
    """
    if getattr(opt, 'override', False):
        return {}
    settings = pretrained_test_settings(name)
    for key, value in settings.items():
        setattr(opt, key, value)
    return settings


# ----------------------------------------------------------------------------- the original release's names
#
# Its README's Python snippet imports these from utils.download (which forwards
# them here). The test settings are the original table: padding mode and
# iterations, plus num_heads for the clustering models (car, horse); the
# transformers accept num_heads as a check of the model they are.
PRETRAINED_TEST_HYPERPARAMS = {
    name: {key: value for key, value in settings.items() if not (key == 'num_heads' and value == 1)}
    for name, settings in _TEST_SETTINGS.items()
}


def download_model(model_name):
    """A released model's checkpoint dict (``t_ema``, ``g_ema``, ``args``, ...), downloaded once.

    ``model_name`` is one of PRETRAINED_NAMES; a checkpoint path works too.
    Raises UserError (unknown name, failed download, unreadable file).
    """
    return load_checkpoint(resolve_checkpoint(model_name), map_location='cpu')
