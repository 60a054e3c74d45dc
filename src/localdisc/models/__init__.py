"""The networks: the LD network (:class:`LDModel`), its VGG U-Net backbone, and the
segmentation network that fine-tuning trains from its encoder (:class:`Segmenter`).

Both load from a folder with ``from_pretrained`` (``config.json`` + safetensors, no pickle) and
take raw images of any size (numpy ``H x W x C`` in [0, 1]): :meth:`LDModel.embed`,
:meth:`LDModel.cluster`, :meth:`Segmenter.predict`. Their ``forward`` takes normalised batches
``[N, C, H, W]`` (:func:`localdisc.data.views.normalize`) with sides a multiple of 16.
"""

from localdisc.models.ld import LDConfig, LDModel
from localdisc.models.segmenter import Segmenter, SegmenterConfig
from localdisc.models.vgg_unet import UNetDecoder, VGGEncoder, VGGUNet

__all__ = [
    "LDConfig",
    "LDModel",
    "Segmenter",
    "SegmenterConfig",
    "UNetDecoder",
    "VGGEncoder",
    "VGGUNet",
]
