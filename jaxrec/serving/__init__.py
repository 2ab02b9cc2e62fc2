"""Inference that skips work: early-exit servers of the OptiRAG-Rec model and its serving bundle.

* :mod:`jaxrec.serving.early_exit`: :class:`~jaxrec.serving.early_exit.EarlyExitServer` (host
  loop over layers) and :class:`~jaxrec.serving.early_exit.DeviceEarlyExitServer` (one jitted
  program per batch size, the exit decision on the device).
* :mod:`jaxrec.serving.bundle`: a trained run's loader and a compact serving bundle (word table
  pruned to the ids used).
"""
