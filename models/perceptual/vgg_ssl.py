"""``--loss_fn vgg_ssl``: distances between self-supervised VGG16 features.

The trunk is the SimCLR-trained VGG16 released with GANgealing
(``simclr_vgg_phase150.pt``, a bare ``features`` state dict). Activations of
the five LPIPS layers are compared without learned channel weights (a plain
channel sum) and the total is divided by 18, as the original recipe does, so
that ``--tv_weight`` values of published recipes keep their meaning.
"""
from models.perceptual import PERCEPTUAL_LOSSES
from models.perceptual._vgg import VGGFeatureDistance, add_weights_option, load_vgg16_trunk, resolve_vgg_weights

SSL_VGG_FILENAME = 'simclr_vgg_phase150.pt'
SSL_VGG_URL = f'http://efrosgans.eecs.berkeley.edu/gangealing/pretrained/{SSL_VGG_FILENAME}'
SSL_DISTANCE_SCALE = 1.0 / 18.0


@PERCEPTUAL_LOSSES.register('vgg_ssl')
class SSLVGGLoss:
    """Unweighted normalised-feature distance of a SimCLR VGG16, scaled by 1/18."""

    @staticmethod
    def modify_commandline_options(parser, is_train):
        return add_weights_option(parser)

    @staticmethod
    def build(opt):
        """Frozen module ``loss(a, b) -> (N,)`` for images (N, 3, H, W) in [-1, 1]."""
        path = resolve_vgg_weights(SSL_VGG_FILENAME, SSL_VGG_URL, opt)
        return VGGFeatureDistance(load_vgg16_trunk(path), channel_weights=None, scale=SSL_DISTANCE_SCALE)
