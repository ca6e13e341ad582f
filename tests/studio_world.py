"""A tiny world for the edit studio's tests: 8 images of 32 x 32 and a transformer that
shifts by exactly 4 pixels (the one tests/test_applications.py builds), so where
every label pixel must land is known."""
import argparse
import base64
import io

import numpy as np
from PIL import Image

from datasets.lmdb_dataset import write_lmdb_dataset
from tests.test_applications import NUM_IMAGES, SHIFT_PIXELS, SIZE, make_images, make_stn
from utils.checkpoint import save_checkpoint

__all__ = ['NUM_IMAGES', 'SHIFT_PIXELS', 'SIZE', 'make_world', 'studio_argv', 'png_bytes', 'decode_png',
           'decode_data_url']


def make_world(root):
    """Write the dataset and the checkpoint under ``root``; returns their paths and the images."""
    data = str(root / 'data')
    images = make_images()
    write_lmdb_dataset(data, {SIZE: images})
    state = make_stn().state_dict()
    args = argparse.Namespace(transform=['similarity', 'flow'], flow_size=16, real_size=SIZE, gen_size=SIZE,
                              stn_channel_multiplier=0.5, num_heads=1, padding_mode='border')
    ckpt = save_checkpoint({'g_ema': {}, 't': state, 't_ema': state, 'args': args}, str(root / 'stn.pt'))
    return {'root': root, 'data': data, 'ckpt': ckpt, 'images': images}


def studio_argv(world, out, *extra):
    """Command-line flags of the studio on the tiny world."""
    return ['--ckpt', world['ckpt'], '--real_data_path', world['data'], '--real_size', str(SIZE),
            '--device', 'cpu', '--batch', '4', '--out', str(out), *map(str, extra)]


def png_bytes(array):
    """uint8 (H, W), (H, W, 3) or (H, W, 4) array -> PNG bytes (L, RGB or RGBA)."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(buffer, format='PNG')
    return buffer.getvalue()


def decode_png(data):
    with Image.open(io.BytesIO(data)) as image:
        return np.array(image)


def decode_data_url(url):
    prefix = 'data:image/png;base64,'
    assert url.startswith(prefix)
    return decode_png(base64.b64decode(url[len(prefix):]))
