"""Training loops and what they share: checkpoints, devices, precision, logs.

- :mod:`~localdisc.engine.pretrain`: :func:`~localdisc.engine.pretrain.pretrain` with a
  :class:`~localdisc.engine.pretrain.PretrainConfig` (LD stage 1 and 2, the peer methods, a
  shape prior; ``localdisc pretrain``);
- :mod:`~localdisc.engine.finetune`: :func:`~localdisc.engine.finetune.finetune` of a
  :class:`~localdisc.models.Segmenter` on tensors, with a
  :class:`~localdisc.engine.finetune.FinetuneConfig` (the paper's frozen + fine-tuned phases);
- :mod:`~localdisc.engine.shape_prior` (the adversarial prior),
  :mod:`~localdisc.engine.pseudo_label` (training on pseudo-labels),
  :mod:`~localdisc.engine.batch_norm` (precise BN),
  :mod:`~localdisc.engine.checkpoint` (atomic safetensors checkpoints),
  :mod:`~localdisc.engine.distributed` (``torchrun``), :mod:`~localdisc.engine.precision` (bf16),
  :mod:`~localdisc.engine.monitor` (log.csv, progress, figures).

The modules ``pretrain`` and ``finetune`` are named as their main functions, so
``localdisc.engine.pretrain`` is the module: import the functions from :mod:`localdisc`
(``from localdisc import pretrain, PretrainConfig``) or from their modules.
"""
