"""TorchRec's default initialisation for jaxrec ``DLRM`` and ``DLRMDCN`` parameters (no torch).

jaxrec initialises as FuxiCTR (embeddings ``N(0, 1e-4)``, Xavier-normal kernels, zero biases).
A TorchRec model built with default arguments draws instead:

* embedding tables ``[V, d]`` (``EmbeddingBagConfig`` without ``init_fn``):
  ``U(-sqrt(1 / V), sqrt(1 / V))``;
* every ``nn.Linear`` (``torchrec.modules.mlp.MLP`` layers and the over arch's last layer):
  PyTorch's default, kernel and bias both ``U(-1 / sqrt(fan_in), 1 / sqrt(fan_in))``
  (``kaiming_uniform_(a=sqrt(5))``);
* ``LowRankCrossNet`` kernels ``V [D, r]``, ``U [r, D]``: Xavier normal, std
  ``sqrt(2 / (D + r))``; its biases zero (jaxrec's ``LowRankCrossLayer`` already does this).

``torchrec_init(params, key)`` redraws a parameter tree with these distributions; it accepts the
top-level modules of DLRM / DLRMDCN (``embedding``, ``bottom_mlp``, ``top_mlp``, ``stacked_dnn``,
``fc``, ``crossnet``) and rejects anything else, naming the parameter.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

PyTree = Any

_LINEAR_MODULES = ('bottom_mlp', 'top_mlp', 'stacked_dnn', 'fc')


def torchrec_init(params: PyTree, key: jax.Array) -> PyTree:
  """Returns ``params`` (same structure and shapes) redrawn with TorchRec's initialisation.

  Args:
    params: unboxed ``DLRM`` or ``DLRMDCN`` parameters (only their shapes are used).
    key: a PRNG key. In sorted path order, the uniform leaves are consecutive slices of one
      ``U(-1, 1)`` draw scaled by their bounds, the normal ones of one ``N(0, 1)`` draw scaled by
      their std (two random ops, however many tables).

  Returns:
    float32 numpy arrays in the structure of ``params``.

  Raises:
    ValueError: a parameter that is not part of a TorchRec DLRM / DLRM_DCN (the message names
      its path).
  """
  flat = traverse_util.flatten_dict(params)
  scales = {}  # path -> ('uniform' | 'normal' | 'zeros', scale)
  for path, value in sorted(flat.items()):
    shape = tuple(value.shape)
    top, leaf = path[0], path[-1]
    if top == 'embedding' and len(shape) == 2:
      scales[path] = ('uniform', math.sqrt(1.0 / shape[0]))
    elif top in _LINEAR_MODULES and leaf in ('kernel', 'bias'):
      kernel = flat.get(path[:-1] + ('kernel',))
      if kernel is None or len(kernel.shape) != 2:
        raise ValueError(f'torchrec_init: {"/".join(path)} has no sibling 2-D kernel to take '
                         'fan_in from')
      scales[path] = ('uniform', 1.0 / math.sqrt(kernel.shape[0]))
    elif top == 'crossnet' and leaf in ('V', 'U') and len(shape) == 2:
      scales[path] = ('normal', math.sqrt(2.0 / (shape[0] + shape[1])))
    elif top == 'crossnet' and leaf == 'bias':
      scales[path] = ('zeros', 0.0)
    else:
      raise ValueError(f'torchrec_init: parameter {"/".join(path)} {shape} is not part of a '
                       'TorchRec DLRM / DLRM_DCN (DLRM with batch_norm, or DCNv2, is not '
                       'supported)')
  sizes = {kind: sum(int(np.prod(flat[p].shape)) for p, (k, _) in scales.items() if k == kind)
           for kind in ('uniform', 'normal')}
  k_uniform, k_normal = jax.random.split(key)
  draws = {'uniform': np.asarray(jax.random.uniform(k_uniform, (sizes['uniform'],), jnp.float32,
                                                    -1.0, 1.0)),
           'normal': np.asarray(jax.random.normal(k_normal, (sizes['normal'],), jnp.float32))}
  offsets = {'uniform': 0, 'normal': 0}
  out = {}
  for path, (kind, scale) in scales.items():
    shape = tuple(flat[path].shape)
    if kind == 'zeros':
      out[path] = np.zeros(shape, np.float32)
      continue
    n = int(np.prod(shape))
    out[path] = (draws[kind][offsets[kind]:offsets[kind] + n].reshape(shape)
                 * np.float32(scale)).astype(np.float32)
    offsets[kind] += n
  return traverse_util.unflatten_dict(out)
