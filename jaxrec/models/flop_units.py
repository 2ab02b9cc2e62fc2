"""The units the FLOP counters share (``jaxrec.models.flops`` for every model, and the vision
counters of ``jaxrec.models.vision_flops`` it registers): a breakdown type and the dense layer.
A multiply-add is 2 FLOPs."""

Breakdown = dict[str, int]


def dense(n_in: int, n_out: int, bias: bool = True) -> int:
  """A dense layer ``[n_in] -> [n_out]``."""
  return 2 * n_in * n_out + (n_out if bias else 0)
