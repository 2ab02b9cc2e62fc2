"""Convolutional building blocks of the vision models (``jaxrec.models.vision``).

* ``conv``: a bias-free 2-D convolution (every conv here is followed by BatchNorm), torchvision
  padding (``kernel // 2`` zeros on every side, so a 3x3 conv of stride 1 keeps the size and a
  stride ``s`` conv gives ``(n - 1) // s + 1``; a 1x1 conv has no padding).
* ``batch_norm``: ``torch.nn.BatchNorm2d`` defaults (epsilon 1e-5, PyTorch momentum 0.1, which is
  flax ``momentum=0.9``), batch statistics when ``train=True`` and running averages otherwise.
* ``dense``: a dense layer with bias (the classifiers).
* ``BasicBlock``: the ResNet basic block (He et al., 2016, "Deep Residual Learning for Image
  Recognition"; torchvision's ``BasicBlock``).

Initialisation: conv kernels He (Kaiming) normal in ``fan_out`` mode, untruncated, std
``sqrt(2 / (k k C_out))`` (torchvision's ResNet: ``kaiming_normal_(mode='fan_out',
nonlinearity='relu')``); BatchNorm scale 1 and bias 0; dense kernels Xavier normal and zero biases,
as jaxrec's other dense layers (``jaxrec.layers.mlp``).

Logical axes: conv kernels ``('conv_height', 'conv_width', 'conv_in', 'conv')``, BatchNorm scale and
bias over conv channels ``('conv',)`` (the names DHEN's conv module uses); dense kernels
``('mlp_in', 'mlp')`` for a hidden layer and ``('mlp_in', 'mlp_out')`` for a classifier, biases
their last name. Every name is in ``AXIS_NAMES`` and has a rule in
``jaxrec.sharding.rules.LOGICAL_AXIS_RULES``.

Parameters are float32; ``dtype`` is the activation (computation) dtype.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax

from jaxrec.layers.mlp import xavier_normal

AXIS_NAMES = ('conv_height', 'conv_width', 'conv_in', 'conv', 'mlp_in', 'mlp', 'mlp_out')
CONV_AXES = ('conv_height', 'conv_width', 'conv_in', 'conv')

# torchvision ResNet's kaiming_normal_(mode='fan_out', nonlinearity='relu'): an untruncated
# normal with variance 2 / fan_out, fan_out = kernel_height * kernel_width * C_out.
he_normal_fan_out = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')

_lp = nn.with_logical_partitioning


def conv_output_size(n: int, kernel: int, stride: int) -> int:
  """Output length of ``conv`` (padding ``kernel // 2`` per side) on an input of length ``n``."""
  pad = kernel // 2
  return (n + 2 * pad - kernel) // stride + 1


def conv(features: int, kernel: int, stride: int = 1, dtype: Any = None,
         name: str | None = None) -> nn.Conv:
  """A bias-free ``kernel x kernel`` conv, ``kernel // 2`` zero padding per side."""
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((pad, pad), (pad, pad)), use_bias=False, dtype=dtype, name=name,
                 kernel_init=_lp(he_normal_fan_out, CONV_AXES))


def batch_norm(train: bool, dtype: Any = None, name: str | None = None) -> nn.BatchNorm:
  """BatchNorm over the channel axis (``torch.nn.BatchNorm2d`` defaults)."""
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype,
                      name=name,
                      scale_init=_lp(nn.initializers.ones_init(), ('conv',)),
                      bias_init=_lp(nn.initializers.zeros_init(), ('conv',)))


def dense(features: int, out_axis: str = 'mlp_out', dtype: Any = None,
          name: str | None = None) -> nn.Dense:
  """A dense layer with bias; kernel ``('mlp_in', out_axis)``, bias ``(out_axis,)``."""
  return nn.Dense(features, dtype=dtype, name=name,
                  kernel_init=_lp(xavier_normal, ('mlp_in', out_axis)),
                  bias_init=_lp(nn.initializers.zeros_init(), (out_axis,)))


class BasicBlock(nn.Module):
  """ResNet basic block: ``relu(BN(conv3x3(relu(BN(conv3x3_s(x))))) + shortcut(x))``.

  The first conv has stride ``stride``. The shortcut is the identity when the shape is kept and a
  projection otherwise (``stride != 1`` or a channel change; He et al.'s option B): a 1x1 conv of
  stride ``stride`` then BatchNorm.

  Attributes:
    features: output channels ``C_out``.
    stride: stride of the first conv (and of the projection).
    dtype: activation dtype (``None``: promote inputs and parameters).

  Call:
    x: ``[batch, H, W, C_in]``; train: batch statistics (True) or running averages (False).

  Returns:
    ``[batch, H', W', C_out]`` with ``H' = (H - 1) // stride + 1`` (likewise ``W'``).

  Example::

    block = BasicBlock(features=32, stride=2)
    variables = block.init({'params': key}, x, train=False)        # x: [B, 28, 28, 16]
    y, updates = block.apply(variables, x, train=True, mutable=['batch_stats'])  # [B, 14, 14, 32]
  """
  features: int
  stride: int = 1
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    y = conv(self.features, 3, self.stride, self.dtype, 'conv_1')(x)  # [B, H', W', C_out]
    y = nn.relu(batch_norm(train, self.dtype, 'bn_1')(y))
    y = conv(self.features, 3, 1, self.dtype, 'conv_2')(y)  # [B, H', W', C_out]
    y = batch_norm(train, self.dtype, 'bn_2')(y)
    shortcut = x
    if self.stride != 1 or x.shape[-1] != self.features:
      shortcut = conv(self.features, 1, self.stride, self.dtype, 'proj_conv')(x)
      shortcut = batch_norm(train, self.dtype, 'proj_bn')(shortcut)  # [B, H', W', C_out]
    return nn.relu(y + shortcut)
