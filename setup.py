"""Installs what the GANgealing trainer needs: `pip install -e .` (add `[dev]` for the tests,
`[studio]` for the edit studio's web page, `[video]` for video in and out, `[cub]` for reading
CUB-200-2011's annotations).

The project runs from its checkout (`python train.py`, `python -m applications.NAME`,
`torchrun ... train.py` from the repository root). Its packages have generic names
(`models`, `datasets`, `utils`, ...), so none of them is installed into site-packages,
where they would shadow (or be shadowed by) other packages of those names, such as
Hugging Face's `datasets`.
"""
from setuptools import setup

setup(
    name='gangealing-trainer',
    version='0.1.0',
    description='GAN-supervised dense visual alignment (GANgealing): training, '
                'alignment of real images, edit propagation and PCK-Transfer evaluation',
    python_requires='>=3.9',
    packages=[],
    py_modules=[],
    # tests/test_packaging.py derives what the code imports and checks it against these lists.
    install_requires=[
        # Tested with torch 2.14.1 / torchvision 0.29.1; older 2.x releases work too.
        'torch>=2.1',
        'torchvision>=0.16',
        'ninja',  # torch.utils.cpp_extension builds the fused CUDA ops with it
        'numpy',
        'tqdm',
        'tensorboard',  # imported through torch.utils.tensorboard
        'lpips',
        'Pillow',
        'lmdb',
    ],
    extras_require={
        # Video in and out (FFmpeg's libraries ship inside the PyAV wheel).
        'video': ['av>=12'],
        # The edit studio's web page (python -m applications.edit_studio).
        'studio': ['starlette', 'uvicorn'],
        # CUB-200-2011's keypoints and boxes come as MATLAB files (prepare_data.py --cub).
        'cub': ['scipy'],
        # The tests; httpx is the studio's test client, selenium drives Chromium.
        'dev': ['pytest', 'scipy', 'av>=12', 'starlette', 'uvicorn', 'httpx', 'selenium'],
    },
)
