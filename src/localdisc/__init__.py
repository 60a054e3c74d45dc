"""localdisc: unsupervised local discrimination for medical images.

The Python API in one namespace (README, "Python"); the command line is ``localdisc --help``.

- data: :func:`load_dataset`, :func:`read_image`, :func:`read_mask`, generated images
  :func:`synthetic_fundus` and :func:`synthetic_xray`;
- networks: :class:`LDModel` (pre-trained LD networks: ``embed``, ``cluster``, ``encoder``) and
  :class:`Segmenter` (fine-tuned segmentation networks: ``predict``), each with its config;
- training: :func:`pretrain` with :class:`PretrainConfig` (``localdisc pretrain``),
  :func:`run_transfer` with :class:`TransferConfig` (``localdisc finetune``), :func:`finetune`
  with :class:`FinetuneConfig` (the training loop on tensors), :func:`predict_images`
  (``localdisc predict``);
- evaluation: :func:`segmentation_metrics` (Dice, F1, AUC, ..., clDice of one image);
- local similarity: :func:`similarity` (maps) and :class:`Localizer` with :class:`SearchConfig`
  (one-shot landmarks), scored against true landmarks by :func:`score_predictions`;
- segmentation without labels: :func:`segment_vessels_self_trained` (``localdisc shape-guided
  vessels``); shape-guided clustering is :mod:`localdisc.tasks.shape_guided` and its shape
  priors :mod:`localdisc.priors`;
- :class:`LocaldiscError`, the base of the errors raised for bad input.

Conventions: images are numpy ``float32`` ``H x W x C`` (or ``H x W``) in [0, 1], as
:func:`read_image` returns them (in memory also ``uint8``/``uint16`` arrays and ``[C, H, W]``
tensors: :func:`localdisc.data.preprocess.as_raw_image`); masks ``bool`` ``H x W``; points
``(x, y)`` in pixels. Run and model folders, and the configs' path fields
(``PretrainConfig.data``, ``TransferConfig.init``, ...), are ``str`` or ``Path``.
:meth:`LDModel.embed` and :meth:`LDModel.cluster` return torch tensors ``[D, H, W]`` and
``[K, H, W]``; the other functions above numpy arrays.
"""

from typing import TYPE_CHECKING

import lazy_loader

__version__ = "0.1.0"

# Imported on first use (lazy_loader, as scikit-image does): `import localdisc` stays light (no
# torch) for the CLI's fast paths, and `localdisc.pretrain` is the function where
# `localdisc.engine.pretrain` is a module of the same name.
__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "data.datasets": ["load_dataset"],
        "data.io": ["read_image", "read_image_meta", "read_mask"],
        "data.synthetic": ["synthetic_fundus", "synthetic_xray"],
        "models.ld": ["LDConfig", "LDModel"],
        "models.segmenter": ["Segmenter", "SegmenterConfig"],
        "engine.pretrain": ["PretrainConfig", "pretrain"],
        "engine.finetune": ["FinetuneConfig", "finetune"],
        "tasks.transfer": ["TransferConfig", "run_transfer"],
        "tasks.predict": ["predict_images"],
        "eval.metrics": ["segmentation_metrics"],
        "tasks.similarity": ["similarity"],
        "tasks.localize": ["Localizer", "SearchConfig", "score_predictions"],
        "tasks.vessels": ["segment_vessels_self_trained"],
        "errors": ["LocaldiscError"],
    },
)

if TYPE_CHECKING:  # what editors and type checkers see
    from localdisc.data.datasets import load_dataset
    from localdisc.data.io import read_image, read_mask
    from localdisc.data.synthetic import synthetic_fundus, synthetic_xray
    from localdisc.engine.finetune import FinetuneConfig, finetune
    from localdisc.engine.pretrain import PretrainConfig, pretrain
    from localdisc.errors import LocaldiscError
    from localdisc.eval.metrics import segmentation_metrics
    from localdisc.models.ld import LDConfig, LDModel
    from localdisc.models.segmenter import Segmenter, SegmenterConfig
    from localdisc.tasks.localize import Localizer, SearchConfig, score_predictions
    from localdisc.tasks.predict import predict_images
    from localdisc.tasks.similarity import similarity
    from localdisc.tasks.transfer import TransferConfig, run_transfer
    from localdisc.tasks.vessels import segment_vessels_self_trained
