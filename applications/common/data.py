"""The dataset an application runs on (not runnable: imported by the applications)."""
import os

from utils.errors import UserError


def build_dataset(opt, pck=False):
    """The dataset of the chosen ``--dataset_mode``: images, or PCK pairs with ``pck``.

    Raises UserError when ``--real_data_path`` is missing or the folder is not
    of the needed kind.
    """
    from datasets.modes import DATASET_MODES

    if not getattr(opt, 'real_data_path', None):
        raise UserError('--real_data_path is required: the dataset to run on')
    if not os.path.exists(opt.real_data_path):
        raise UserError(f"dataset '{opt.real_data_path}' does not exist; check --real_data_path")
    mode = DATASET_MODES.get(opt.dataset_mode)
    dataset = mode.build_pck(opt) if pck else mode.build_images(opt, 'test')
    if dataset is None:
        what = 'a PCK dataset (images plus keypoints.pt)' if pck else 'an image dataset'
        raise UserError(f"'{opt.real_data_path}' is not {what} for --dataset_mode {opt.dataset_mode}; "
                        f"prepare it with prepare_data.py")
    return dataset
