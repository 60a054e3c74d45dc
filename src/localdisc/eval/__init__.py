"""Evaluation: segmentation metrics, benchmark reports, figures and provenance.

- :mod:`~localdisc.eval.metrics`: :func:`segmentation_metrics` (all metrics of one image:
  the paper's whole-image ``dice``; ``f1``, ``auc``, ``accuracy``, ``sensitivity``,
  ``specificity`` inside the FOV; ``cldice`` with ``topology=True``), :func:`dice_score`,
  :func:`auc_roc`, :func:`cldice`, :func:`vessel_metrics`, :func:`paper_dice` (a mask made at
  another size), :func:`summarize` (mean, std, n over images). Arguments are
  ``(prob, target, fov)``: numpy arrays (or anything ``np.asarray`` takes) of one shape.
- :mod:`~localdisc.eval.report`: the benchmarks' ``results.json`` and ``results.md``.
- :mod:`~localdisc.eval.figures`: cluster and similarity maps of an LD model.
- :mod:`~localdisc.eval.provenance`: :func:`~localdisc.eval.provenance.environment`, where and
  when an output was made (versions, commit, machine, processes, start time, command), as the
  outputs' JSON records it.
"""

from typing import TYPE_CHECKING

import lazy_loader

# Imported on first use (scipy, scikit-image); other names are the submodules.
__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "metrics": [
            "auc_roc",
            "cldice",
            "confusion_counts",
            "dice_score",
            "paper_dice",
            "segmentation_metrics",
            "summarize",
            "vessel_metrics",
        ]
    },
)

if TYPE_CHECKING:
    from localdisc.eval.metrics import (
        auc_roc,
        cldice,
        confusion_counts,
        dice_score,
        paper_dice,
        segmentation_metrics,
        summarize,
        vessel_metrics,
    )
