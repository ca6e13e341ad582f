"""``--dataset_mode lmdb``: LMDB datasets made by prepare_data.py."""
import os

from datasets.lmdb_dataset import MultiResolutionDataset
from datasets.modes import DATASET_MODES
from datasets.keypoint_pairs import PCKDataset, has_pck_files


@DATASET_MODES.register('lmdb')
class LMDBMode:
    """Real images from ``--real_data_path`` (an LMDB folder) at ``--real_size``;
    PCK pairs when that folder also holds keypoints.pt."""

    @staticmethod
    def modify_commandline_options(parser, is_train):
        """Adds ``--num_pck_pairs`` (random pairs instead of the fixed ones)."""
        if not any('--num_pck_pairs' in action.option_strings for action in parser._actions):
            parser.add_argument('--num_pck_pairs', type=int, default=None,
                                help='PCK evaluation on this many seeded random pairs (unset: the '
                                     "dataset's fixed pairs, or one random pairing of its images)")
        return parser

    @staticmethod
    def build_images(opt, split):
        """MultiResolutionDataset(opt.real_data_path, opt.real_size), or None
        without ``--real_data_path``. ``split`` is accepted for interface
        symmetry; an LMDB folder is one split."""
        if not getattr(opt, 'real_data_path', None):
            return None
        return MultiResolutionDataset(opt.real_data_path, opt.real_size)

    @staticmethod
    def build_pck(opt):
        """PCKDataset at ``--real_size`` when the folder holds keypoints.pt, else None."""
        path = getattr(opt, 'real_data_path', None)
        if not path or not os.path.isdir(path) or not has_pck_files(path):
            return None
        return PCKDataset(path, opt.real_size, num_pck_pairs=getattr(opt, 'num_pck_pairs', None),
                          seed=getattr(opt, 'seed', 0))
