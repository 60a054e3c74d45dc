"""Losses of local discrimination (Chen et al., TPAMI 2023, Sec. 3): one module per loss.

- :mod:`~localdisc.losses.isl`: instance-spreading criterion (ISL), the contrastive core.
- :mod:`~localdisc.losses.patch`: patch embeddings and patch discrimination.
- :mod:`~localdisc.losses.mixup`: hypersphere mixup.
- :mod:`~localdisc.losses.region`: region embeddings and region discrimination.
- :mod:`~localdisc.losses.entropy`: binary entropy of the cluster assignments.

Stage 1 trains ``L_PD + L_mix``; stage 2 ``L_PD + L_mix + 10 L_RD + 0.1 L_ent``.
"""

from localdisc.losses.entropy import EntropyLoss, entropy_loss
from localdisc.losses.isl import InstanceSpreadingLoss, isl_loss
from localdisc.losses.mixup import HypersphereMixupLoss, hypersphere_mixup_loss, mixup_targets
from localdisc.losses.patch import (
    PatchDiscriminationLoss,
    flatten_patches,
    patch_discrimination_loss,
    patch_embeddings,
)
from localdisc.losses.region import (
    RegionDiscriminationLoss,
    region_discrimination_loss,
    region_embeddings,
)

__all__ = [
    "EntropyLoss",
    "HypersphereMixupLoss",
    "InstanceSpreadingLoss",
    "PatchDiscriminationLoss",
    "RegionDiscriminationLoss",
    "entropy_loss",
    "flatten_patches",
    "hypersphere_mixup_loss",
    "isl_loss",
    "mixup_targets",
    "patch_discrimination_loss",
    "patch_embeddings",
    "region_discrimination_loss",
    "region_embeddings",
]
