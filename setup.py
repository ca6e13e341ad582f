"""Installs the GANgealing trainer: `pip install -e .` (add `[dev]` for the tests)."""
from setuptools import find_packages, setup

setup(
    name='gangealing-trainer',
    version='0.1.0',
    description='GAN-supervised dense visual alignment (GANgealing): training, '
                'alignment of real images, edit propagation and PCK-Transfer evaluation',
    python_requires='>=3.9',
    packages=find_packages(include=['applications*', 'datasets*', 'models*', 'ops*', 'utils*']),
    py_modules=['train', 'prepare_data'],
    package_data={'ops': ['cuda/*.cu', 'cuda/*.cpp', 'cuda/*.h', 'cuda/*.cuh']},
    install_requires=[
        # Tested with torch 2.14.1 / torchvision 0.29.1; older 2.x releases work too.
        'torch>=2.1',
        'torchvision>=0.16',
        'ninja',
        'numpy',
        'tqdm',
        'tensorboard',
        'lpips',
        'Pillow',
        'lmdb',
        'filelock',
    ],
    extras_require={
        # Video in and out (FFmpeg's libraries ship inside the PyAV wheel).
        'video': ['av>=12'],
        'dev': ['pytest', 'scipy', 'av>=12'],
    },
)
