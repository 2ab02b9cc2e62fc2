"""Per-example forward FLOPs of the vision models (``jaxrec.models.vision``), computed analytically.

``vision_flops(model)`` counts the arithmetic of one example's forward pass in inference mode
(BatchNorm with running averages, no dropout); ``vision_flops_breakdown(model)`` gives the same
total split by component. The convention is ``jaxrec.models.flops``'s:

* a multiply-add is 2 FLOPs: a dense layer ``[in] -> [out]`` costs ``2 in out + out``;
* a convolution costs 2 FLOPs per multiply-add **it actually performs**: ``2 C_in C_out`` times
  the number of (output position, kernel tap) pairs whose input pixel lies inside the image. Taps
  that land on the zero padding are not counted (they add nothing, and XLA's cost analysis does not
  count them either). Per spatial axis of input length ``n``, kernel ``k``, stride ``s`` and
  padding ``k // 2`` that number is ``taps(n, k, s)``, so

      conv FLOPs = 2 taps(H, k, s) taps(W, k, s) C_in C_out,

  which is ``2 H_out W_out k^2 C_in C_out`` when nothing is padded (1x1 convs) and a little less
  otherwise (a 3x3 stride-1 conv on 28x28: ``82^2`` pairs instead of ``28^2 9 = 84^2``, -4.7%;
  on 7x7: ``19^2`` vs ``21^2``, -18%). ``count_padding=True`` gives the textbook
  ``2 H_out W_out k^2 C_in C_out`` instead (padding taps counted, as most papers' FLOP tables do);
* eval-mode BatchNorm is 2 FLOPs per element (a scale and a shift; its per-channel factors do not
  depend on the example), ReLU and the residual add 1 per element;
* a ``k x k`` max pool costs its ``k^2 - 1`` comparisons per output element; the global average
  pool is a reduction, ``H W C`` (``H W - 1`` adds and one division per channel);
* dropout (off at inference), reshapes and casts are free; only work that scales with the batch
  counts.

tests/models/test_vision.py checks the default ``CNN`` and ``ResNet`` (ResNet-20) against XLA's
cost analysis of the compiled eval forward (``flops + transcendentals``, difference of two batch
sizes) within 3%.
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn

from jaxrec.layers.conv import conv_output_size
from jaxrec.models.flop_units import Breakdown, dense
from jaxrec.models.vision import CNN, NUM_STAGES, ResNet

# ---- building blocks ----


def conv_taps(n: int, kernel: int, stride: int = 1) -> int:
  """(output position, kernel tap) pairs along one axis of length ``n`` that read a real pixel.

  The conv pads ``kernel // 2`` on each side (``jaxrec.layers.conv.conv``).
  """
  pad = kernel // 2
  return sum(1 for o in range(conv_output_size(n, kernel, stride)) for j in range(kernel)
             if 0 <= o * stride - pad + j < n)


def conv2d(h: int, w: int, c_in: int, c_out: int, kernel: int, stride: int = 1,
           count_padding: bool = False) -> int:
  """A bias-free ``kernel x kernel`` conv on a ``[h, w, c_in]`` map (module docstring)."""
  if count_padding:
    h_out, w_out = conv_output_size(h, kernel, stride), conv_output_size(w, kernel, stride)
    return 2 * h_out * w_out * kernel * kernel * c_in * c_out
  return 2 * conv_taps(h, kernel, stride) * conv_taps(w, kernel, stride) * c_in * c_out


def batch_norm(n: int) -> int:
  """Eval-mode BatchNorm on ``n`` elements."""
  return 2 * n


def max_pool(h_out: int, w_out: int, c: int, window: int = 2) -> int:
  """A ``window x window`` max pool with ``[h_out, w_out, c]`` outputs."""
  return (window * window - 1) * h_out * w_out * c


def conv_bn_relu(h: int, w: int, c_in: int, c_out: int, kernel: int = 3, stride: int = 1,
                 count_padding: bool = False) -> int:
  """conv -> BatchNorm -> ReLU."""
  n = conv_output_size(h, kernel, stride) * conv_output_size(w, kernel, stride) * c_out
  return conv2d(h, w, c_in, c_out, kernel, stride, count_padding) + batch_norm(n) + n


def basic_block(h: int, w: int, c_in: int, c_out: int, stride: int = 1,
                count_padding: bool = False) -> int:
  """``jaxrec.layers.conv.BasicBlock`` on a ``[h, w, c_in]`` map."""
  h_out, w_out = conv_output_size(h, 3, stride), conv_output_size(w, 3, stride)
  n = h_out * w_out * c_out
  total = conv_bn_relu(h, w, c_in, c_out, 3, stride, count_padding)
  total += conv2d(h_out, w_out, c_out, c_out, 3, 1, count_padding) + batch_norm(n)
  if stride != 1 or c_in != c_out:
    total += conv2d(h, w, c_in, c_out, 1, stride, count_padding) + batch_norm(n)
  return total + n + n  # residual add, ReLU


# ---- models ----


def _cnn(m: CNN, count_padding: bool) -> Breakdown:
  h, w, c = m.schema.shape
  b = {}
  for i, c_out in enumerate(m.channels):
    b[f'conv_{i}'] = conv_bn_relu(h, w, c, c_out, 3, 1, count_padding)
    h, w, c = h // 2, w // 2, c_out
    b[f'pool_{i}'] = max_pool(h, w, c)
  b['hidden'] = dense(h * w * c, m.hidden) + m.hidden  # + ReLU
  b['classifier'] = dense(m.hidden, m.schema.num_classes)
  return b


def _resnet(m: ResNet, count_padding: bool) -> Breakdown:
  h, w, c = m.schema.shape
  b = {'stem': conv_bn_relu(h, w, c, m.width, 3, 1, count_padding)}
  c = m.width
  for stage in range(NUM_STAGES):
    total = 0
    for block in range(m.blocks_per_stage):
      stride = 2 if stage > 0 and block == 0 else 1
      c_out = m.width * 2 ** stage
      total += basic_block(h, w, c, c_out, stride, count_padding)
      h, w, c = conv_output_size(h, 3, stride), conv_output_size(w, 3, stride), c_out
    b[f'stage_{stage + 1}'] = total
  b['pool'] = h * w * c
  b['classifier'] = dense(c, m.schema.num_classes)
  return b


COUNTERS: dict[type[nn.Module], Callable[[nn.Module, bool], Breakdown]] = {
    CNN: _cnn, ResNet: _resnet}


def vision_flops_breakdown(model: nn.Module, count_padding: bool = False) -> Breakdown:
  """Per-example forward FLOPs of a vision model by component (``{name: flops}``).

  CNN: ``conv_i`` (conv + BatchNorm + ReLU), ``pool_i``, ``hidden`` (dense + ReLU),
  ``classifier``. ResNet: ``stem``, ``stage_1`` .. ``stage_3``, ``pool``, ``classifier``.
  ``count_padding``: count conv taps on the zero padding too (module docstring).

  Raises:
    TypeError: a model type with no counter (the message lists the supported ones).
  """
  counter = COUNTERS.get(type(model))
  if counter is None:
    raise TypeError(f'no vision FLOP counter for {type(model).__name__}; supported: '
                    f'{sorted(c.__name__ for c in COUNTERS)}')
  return {k: int(v) for k, v in counter(model, count_padding).items()}


def vision_flops(model: nn.Module, count_padding: bool = False) -> int:
  """Per-example forward FLOPs of a vision model (2 per multiply-add; module docstring)."""
  return sum(vision_flops_breakdown(model, count_padding).values())
