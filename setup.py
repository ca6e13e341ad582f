"""Installs the GANgealing trainer: `pip install -e .` (add `[dev]` for the tests, `[studio]` for the
edit studio's web page)."""
from setuptools import find_packages, setup

setup(
    name='gangealing-trainer',
    version='0.1.0',
    description='GAN-supervised dense visual alignment (GANgealing): training, '
                'alignment of real images, edit propagation and PCK-Transfer evaluation',
    python_requires='>=3.9',
    packages=find_packages(include=['applications*', 'datasets*', 'models*', 'ops*', 'utils*']),
    py_modules=['train', 'prepare_data'],
    package_data={'ops': ['cuda/*.cu', 'cuda/*.cpp', 'cuda/*.h', 'cuda/*.cuh'],
                  'applications.studio': ['static/*.html', 'static/*.css', 'static/*.js']},
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
        # The edit studio's web page (python -m applications.edit_studio).
        'studio': ['starlette', 'uvicorn'],
        # The tests, including the studio's: httpx for its test client, selenium to drive Chromium.
        'dev': ['pytest', 'scipy', 'starlette', 'uvicorn', 'httpx', 'selenium'],
    },
)
