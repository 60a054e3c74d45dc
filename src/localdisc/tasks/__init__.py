"""What the commands do, as functions: transfer, prediction, similarity, landmarks,
segmentation without labels and the benchmarks.

- :mod:`~localdisc.tasks.transfer`: :func:`~localdisc.tasks.transfer.run_transfer` with a
  :class:`~localdisc.tasks.transfer.TransferConfig` (``localdisc finetune``);
- :mod:`~localdisc.tasks.predict`: :func:`~localdisc.tasks.predict.predict_images`
  (``localdisc predict``);
- :mod:`~localdisc.tasks.similarity`: :func:`~localdisc.tasks.similarity.similarity`
  (``localdisc similarity``), :func:`~localdisc.tasks.similarity.load_model` (a run with its
  patch kernel, loaded once for many calls);
- :mod:`~localdisc.tasks.localize`: :class:`~localdisc.tasks.localize.Localizer`,
  :class:`~localdisc.tasks.localize.SearchConfig`, :func:`~localdisc.tasks.localize.ncc_localize`
  (``localdisc localize``);
- :mod:`~localdisc.tasks.shape_guided`: :func:`~localdisc.tasks.shape_guided.segment` (outputs A
  and B of one image), :func:`~localdisc.tasks.shape_guided.refine`,
  :func:`~localdisc.tasks.shape_guided.segment_images` (``localdisc shape-guided segment``);
- :mod:`~localdisc.tasks.vessels`:
  :func:`~localdisc.tasks.vessels.segment_vessels_self_trained` (``localdisc shape-guided
  vessels``), with :mod:`~localdisc.tasks.self_training` and :mod:`~localdisc.tasks.vesselness`
  (the filters);
- ``benchmark_*``: ``localdisc benchmark ...``; :mod:`~localdisc.tasks.presets`: the LD runs
  they make.

The module ``similarity`` is named as its function, so ``localdisc.tasks.similarity`` is the
module: ``from localdisc import similarity`` gives the function.
"""
