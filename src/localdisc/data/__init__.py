"""Images and data sets: reading files, the supported data sets, generated images, the
pre-training pool and LD's views.

- :mod:`~localdisc.data.io`: :func:`read_image` (``float32`` ``H x W x C`` in [0, 1] and an
  :class:`ImageMeta`), :func:`read_mask` (``bool`` ``H x W``), :func:`write_png`;
- :mod:`~localdisc.data.datasets`: :func:`load_dataset` (``name``, ``root``, ``split``: a
  sequence of :class:`Sample` with ``name``, ``image``, ``masks``, ``fov``), :func:`load_data_spec`
  (``NAME:ROOT`` or a folder), :data:`DATASETS` (the known names);
- :mod:`~localdisc.data.synthetic`: :func:`synthetic_fundus`, :func:`synthetic_xray` (generated
  images with exact ground truth);
- :mod:`~localdisc.data.pool`: :func:`load_pool`, :func:`synthetic_pool` (uint8
  ``[N, C, P, P]`` pools for :func:`localdisc.pretrain`);
- :mod:`~localdisc.data.preprocess` (resizing, channels, FOV), :mod:`~localdisc.data.views`
  (LD's augmented views, network normalisation), :mod:`~localdisc.data.genesis` (Models
  Genesis corruptions), :mod:`~localdisc.data.inspect` (``localdisc datasets inspect``).
"""

from typing import TYPE_CHECKING

import lazy_loader

# Imported on first use: the CLI lists data sets without loading torch. Other names (``io``,
# ``pool``, ...) are the submodules, imported as usual.
__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "datasets": ["DATASETS", "Sample", "SegmentationDataset", "load_data_spec", "load_dataset"],
        "io": ["ImageMeta", "read_image", "read_mask", "write_png"],
        "pool": ["load_pool", "synthetic_pool"],
        "synthetic": ["synthetic_fundus", "synthetic_xray"],
    },
)

if TYPE_CHECKING:
    from localdisc.data.datasets import (
        DATASETS,
        Sample,
        SegmentationDataset,
        load_data_spec,
        load_dataset,
    )
    from localdisc.data.io import ImageMeta, read_image, read_mask, write_png
    from localdisc.data.pool import load_pool, synthetic_pool
    from localdisc.data.synthetic import synthetic_fundus, synthetic_xray
