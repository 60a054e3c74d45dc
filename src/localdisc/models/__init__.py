"""The LD network and its backbone."""

from localdisc.models.ld import LDConfig, LDModel
from localdisc.models.vgg_unet import UNetDecoder, VGGEncoder, VGGUNet

__all__ = ["LDConfig", "LDModel", "UNetDecoder", "VGGEncoder", "VGGUNet"]
