"""Shape priors for shape-guided clustering (METHOD.md 5).

Reference masks that the shape discriminator learns as "real": masks from a folder (vessel
masks of another modality such as OCTA or DSA), the masks of a known data set with similar
shapes, or simulated vessels, lungs, heart, optic disc or fovea
(:func:`simulate_mask`). :func:`load_prior` turns a prior spec into a bank of masks
(:func:`prior_masks` as an array, cached; :func:`prior_frequency`: how often each pixel is in
them), :func:`sample_prior_batch` draws
augmented batches from it (:class:`PriorAugment`), :func:`prior_gallery` draws priors beside
real masks for a visual check, :func:`measure_topology` / :func:`enforce_topology` hold a
segmentation to the prior's number of pieces and holes, and :mod:`localdisc.priors.atlas` moves a
kept-pose prior's masks onto an image, fuses those that match it best, and fits the intensity
model they guide.
"""

from __future__ import annotations

from localdisc.priors.augment import PriorAugment, sample_prior_batch
from localdisc.priors.gallery import prior_gallery
from localdisc.priors.simulate import SIMULATORS, simulate_mask, simulate_masks
from localdisc.priors.sources import describe_prior, load_prior, prior_frequency, prior_masks
from localdisc.priors.topology import (
    PriorTopology,
    enforce_topology,
    measure_topology,
    prior_topology,
)

__all__ = [
    "SIMULATORS",
    "PriorAugment",
    "PriorTopology",
    "describe_prior",
    "enforce_topology",
    "load_prior",
    "measure_topology",
    "prior_frequency",
    "prior_masks",
    "prior_gallery",
    "prior_topology",
    "sample_prior_batch",
    "simulate_mask",
    "simulate_masks",
]
