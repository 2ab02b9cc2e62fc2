"""Inference: early-exit servers of the OptiRAG-Rec model and its serving bundle; sampling from the
mixed-modal decoder LM.

* :mod:`jaxrec.serving.early_exit`: :class:`~jaxrec.serving.early_exit.EarlyExitServer` (host
  loop over layers) and :class:`~jaxrec.serving.early_exit.DeviceEarlyExitServer` (one jitted
  program per batch size, the exit decision on the device).
* :mod:`jaxrec.serving.bundle`: a trained run's loader and a compact serving bundle (word table
  pruned to the ids used).
* :mod:`jaxrec.serving.mixed_modal_sampling`: class-conditioned images (a caption, then exactly one
  image's codes) and text continuations from a ``decoder_lm`` run, with a KV cache.
"""
