"""Bridges to PyTorch baselines.

* ``jaxrec.compat.dlrm_dcn``: TorchRec's ``DLRM_DCN`` as a Flax module (no torch needed).
* ``jaxrec.compat.torchrec_init``: TorchRec's default initialisation for DLRM / DLRM_DCN
  parameters (no torch needed).
* ``jaxrec.compat.torchrec``: weight, batch and train-step conversion to and from TorchRec's
  ``DLRM`` / ``DLRM_DCN``; needs the optional extra ``jaxrec[torch]``.
* ``jaxrec.compat.plain_torch``: the same DLRM / DLRM_DCN in plain PyTorch (``nn.EmbeddingBag``),
  for machines without TorchRec (e.g. a GPU); needs torch only.
* ``jaxrec.compat.params_check``: the torch-free shape checks both converters share.

Nothing here is imported by ``import jaxrec``.
"""
