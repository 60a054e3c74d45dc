"""Peer pre-training methods in the LD harness: same encoder, same data, each paper's objective.

``localdisc pretrain --method ld|simclr|densecl|pixpro|genesis``: LD itself is the engine's own
path (:mod:`localdisc.engine.pretrain`); the peers are :class:`PretrainObjective` subclasses
registered in :data:`PEER_METHODS`, each built around an :class:`~localdisc.models.ld.LDModel`
(kept as ``objective.model``, which is what transfer uses):

- ``simclr``: SimCLR, Chen et al., ICML 2020 (:mod:`localdisc.methods.simclr`).
- ``densecl``: DenseCL, Wang et al., CVPR 2021 (:mod:`localdisc.methods.densecl`).
- ``pixpro``: PixPro, Xie et al., CVPR 2021 (:mod:`localdisc.methods.pixpro`).
- ``genesis``: Models Genesis, Zhou et al., MICCAI 2019 / MedIA 2021, trains the whole U-Net
  (:mod:`localdisc.methods.genesis`).

Engine contract, per step (see :class:`PretrainObjective`)::

    objective = PEER_METHODS[name](model, size=size, modality=modality, **options)
    optimizer = torch.optim.Adam(objective.trainable_parameters(), lr=...)
    terms = objective(x1, x2, generator)     # uint8 [B, C, P, P] pairs -> {"loss": ..., ...}
    terms["loss"].backward(); optimizer.step()
    objective.after_step(progress)           # momentum encoders, queues (progress: run done, 0..1)
    # checkpoint: objective.state_dict() (all state); transfer: objective.model
"""

from __future__ import annotations

from localdisc.methods.base import PeerViewBatch, PeerViews, PretrainObjective
from localdisc.methods.densecl import DenseCLObjective
from localdisc.methods.genesis import GenesisObjective
from localdisc.methods.pixpro import PixProObjective
from localdisc.methods.simclr import SimCLRObjective

#: Peer methods by their ``--method`` name.
PEER_METHODS: dict[str, type[PretrainObjective]] = {
    cls.name: cls for cls in (SimCLRObjective, DenseCLObjective, PixProObjective, GenesisObjective)
}

__all__ = [
    "PEER_METHODS",
    "DenseCLObjective",
    "GenesisObjective",
    "PeerViewBatch",
    "PeerViews",
    "PixProObjective",
    "PretrainObjective",
    "SimCLRObjective",
]
