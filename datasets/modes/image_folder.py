"""``--dataset_mode image_folder``: a plain folder of image files."""
from datasets.image_folder import ImageFolderDataset
from datasets.modes import DATASET_MODES
from datasets.transforms import PAD_MODES


@DATASET_MODES.register('image_folder')
class ImageFolderMode:
    """Images of ``--real_data_path`` made square (``--image_pad``) and resized to
    ``--real_size`` when read. No keypoints: ``build_pck`` returns None."""

    @staticmethod
    def modify_commandline_options(parser, is_train):
        """Adds ``--image_pattern`` and ``--image_pad``."""
        parser.add_argument('--image_pattern', type=str, default=None,
                            help="glob pattern of the images inside --real_data_path ('**' recurses; "
                                 'unset: every common image file, recursively)')
        parser.add_argument('--image_pad', type=str, default='center', choices=PAD_MODES,
                            help='how non-square images are made square (see prepare_data.py --pad)')
        return parser

    @staticmethod
    def build_images(opt, split):
        """ImageFolderDataset of ``--real_data_path`` at ``--real_size``, or None
        without a path. ``split`` is accepted for interface symmetry."""
        if not getattr(opt, 'real_data_path', None):
            return None
        return ImageFolderDataset(opt.real_data_path, opt.real_size, pad=getattr(opt, 'image_pad', 'center'),
                                  pattern=getattr(opt, 'image_pattern', None))

    @staticmethod
    def build_pck(opt):
        """Image folders carry no keypoints."""
        return None
