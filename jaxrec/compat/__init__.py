"""Bridges to PyTorch baselines.

* ``jaxrec.compat.dlrm_dcn``: TorchRec's ``DLRM_DCN`` as a Flax module (no torch needed).
* ``jaxrec.compat.torchrec_init``: TorchRec's default initialisation for DLRM / DLRM_DCN
  parameters (no torch needed).
* ``jaxrec.compat.torchrec``: weight, batch and train-step conversion to and from TorchRec's
  ``DLRM`` / ``DLRM_DCN``; needs the optional extra ``jaxrec[torch]``.

Nothing here is imported by ``import jaxrec``.
"""
