"""Image classifiers: a plain CNN and a CIFAR-style ResNet; each maps a batch to logits.

Both are built as ``Model(schema=image_schema, <hyperparameters>)`` (``ImageSchema``: height,
width, channels, num_classes) and applied like the CTR models::

  logits, updates = model.apply(variables, features, train=True, rngs={'dropout': key},
                                mutable=['batch_stats'])
  logits = model.apply(variables, features, train=False)

``features['image']``: ``float32 [batch, height, width, channels]``; logits ``float32 [batch,
num_classes]``. BatchNorm uses batch statistics (and updates its running averages) when
``train=True`` and the running averages otherwise. Parameters are float32; ``dtype`` sets the
activation dtype (the image is cast to it), the logits are returned in float32.

Building blocks, initialisation and logical axis names: ``jaxrec.layers.conv``. Analytic FLOPs:
``jaxrec.models.vision_flops``.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxrec.data.schema import ImageSchema
from jaxrec.layers.conv import BasicBlock, batch_norm, conv, dense

NUM_STAGES = 3  # ResNet stages, widths width, 2 width, 4 width


def _positive_int(model: str, field: str, value: Any) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ValueError(f'{model}: {field} must be a positive int, got {value!r}')


def _check_schema(model: str, schema: Any) -> None:
  if not isinstance(schema, ImageSchema):
    raise ValueError(f'{model}: schema must be an ImageSchema, got {type(schema).__name__}')


def image_input(model: str, schema: ImageSchema, features: Mapping[str, jax.Array],
                dtype: Any) -> jax.Array:
  """``features['image']`` checked against ``schema`` and cast to ``dtype``."""
  if 'image' not in features:
    raise ValueError(f'{model}: features have no \'image\' entry (keys: {sorted(features)})')
  x = features['image']
  if x.ndim != 4 or tuple(x.shape[1:]) != schema.shape:
    raise ValueError(f'{model}: image shape {tuple(x.shape)} is not [batch, *{schema.shape}] '
                     f'(the schema\'s height, width, channels)')
  return x.astype(dtype)


class CNN(nn.Module):
  """A plain CNN (MNIST-sized by default).

  For each ``c`` in ``channels``: conv3x3(``c``, padding 1) -> BatchNorm -> ReLU -> max pool 2x2
  (stride 2, floor); then flatten -> dense(``hidden``) -> ReLU -> dropout -> dense(num_classes).
  On 28x28x1 with the defaults: ``[28, 28, 32] -> [14, 14, 32] -> [14, 14, 64] -> [7, 7, 64] ->
  [3136] -> [128] -> [10]``.

  Attributes:
    schema: the ``ImageSchema``.
    channels: conv widths, one conv stage each (at least one; the image must survive the
      ``len(channels)`` halvings: ``height // 2**len(channels) >= 1``, likewise width).
    hidden: width of the hidden dense layer.
    dropout: dropout rate after the hidden layer (train only; needs a ``'dropout'`` rng).
    dtype: activation dtype.

  Call:
    features: the batch dict (``'image'``: ``[batch, H, W, C]``); train: training mode.

  Returns:
    logits ``float32 [batch, num_classes]``.

  Example::

    model = CNN(schema=ImageSchema(28, 28, 1, 10), channels=(32, 64), hidden=128, dropout=0.5)
    variables = model.init({'params': key}, {'image': images}, train=False)
    logits, updates = model.apply(variables, {'image': images}, train=True,
                                  rngs={'dropout': key}, mutable=['batch_stats'])  # [B, 10]
  """
  schema: ImageSchema
  channels: Sequence[int] = (32, 64)
  hidden: int = 128
  dropout: float = 0.0
  dtype: Any = jnp.float32

  def __post_init__(self):
    _check_schema('CNN', self.schema)
    if not isinstance(self.channels, (tuple, list)) or not self.channels:
      raise ValueError(f'CNN: channels must be a non-empty sequence of positive ints, got '
                       f'{self.channels!r}')
    object.__setattr__(self, 'channels', tuple(self.channels))  # hashable, as build_model does
    for i, c in enumerate(self.channels):
      _positive_int('CNN', f'channels[{i}]', c)
    _positive_int('CNN', 'hidden', self.hidden)
    if isinstance(self.dropout, bool) or not 0.0 <= self.dropout < 1.0:
      raise ValueError(f'CNN: dropout must be in [0, 1), got {self.dropout!r}')
    shrink = 2 ** len(self.channels)
    if self.schema.height // shrink < 1 or self.schema.width // shrink < 1:
      raise ValueError(f'CNN: channels has {len(self.channels)} stages, whose 2x2 max pools '
                       f'shrink a {self.schema.height}x{self.schema.width} image to nothing')
    super().__post_init__()

  @nn.compact
  def __call__(self, features: Mapping[str, jax.Array], train: bool) -> jax.Array:
    x = image_input('CNN', self.schema, features, self.dtype)  # [B, H, W, C]
    for i, c in enumerate(self.channels):
      x = conv(int(c), 3, 1, self.dtype, f'conv_{i}')(x)  # [B, H, W, c]
      x = nn.relu(batch_norm(train, self.dtype, f'bn_{i}')(x))
      x = nn.max_pool(x, (2, 2), strides=(2, 2))  # [B, H // 2, W // 2, c]
    x = x.reshape(x.shape[0], -1)  # [B, H' W' c]
    x = nn.relu(dense(self.hidden, 'mlp', self.dtype, 'hidden')(x))  # [B, hidden]
    if self.dropout > 0:
      x = nn.Dropout(self.dropout, deterministic=not train, name='dropout')(x)
    logits = dense(self.schema.num_classes, 'mlp_out', self.dtype, 'classifier')(x)
    return logits.astype(jnp.float32)  # [B, num_classes]


class ResNet(nn.Module):
  """ResNet for small images, He et al. (2016) CIFAR variant (ResNet-20 by default).

  conv3x3(``width``) -> BatchNorm -> ReLU; three stages of ``blocks_per_stage`` ``BasicBlock`` s of
  widths ``width``, ``2 width``, ``4 width``, the first block of stages 2 and 3 with stride 2 and a
  projection shortcut (1x1 conv stride 2 + BatchNorm, option B), the others identity shortcuts;
  global average pool; dense(num_classes). Depth ``6 blocks_per_stage + 2`` (3: ResNet-20,
  5: ResNet-32, 9: ResNet-56). On 28x28: ``[28, 28, 16] -> [14, 14, 32] -> [7, 7, 64] -> [64]``.

  Attributes:
    schema: the ``ImageSchema``.
    blocks_per_stage: basic blocks per stage.
    width: channels of the stem and the first stage.
    dtype: activation dtype.

  Call:
    features: the batch dict (``'image'``: ``[batch, H, W, C]``); train: training mode.

  Returns:
    logits ``float32 [batch, num_classes]``.

  Example::

    model = ResNet(schema=ImageSchema(32, 32, 3, 10), blocks_per_stage=3, width=16)
    variables = model.init({'params': key}, {'image': images}, train=False)
    logits, updates = model.apply(variables, {'image': images}, train=True,
                                  mutable=['batch_stats'])  # [B, 10]
  """
  schema: ImageSchema
  blocks_per_stage: int = 3
  width: int = 16
  dtype: Any = jnp.float32

  def __post_init__(self):
    _check_schema('ResNet', self.schema)
    _positive_int('ResNet', 'blocks_per_stage', self.blocks_per_stage)
    _positive_int('ResNet', 'width', self.width)
    super().__post_init__()

  @nn.compact
  def __call__(self, features: Mapping[str, jax.Array], train: bool) -> jax.Array:
    x = image_input('ResNet', self.schema, features, self.dtype)  # [B, H, W, C]
    x = conv(self.width, 3, 1, self.dtype, 'stem_conv')(x)  # [B, H, W, width]
    x = nn.relu(batch_norm(train, self.dtype, 'stem_bn')(x))
    for stage in range(NUM_STAGES):
      for block in range(self.blocks_per_stage):
        stride = 2 if stage > 0 and block == 0 else 1
        x = BasicBlock(self.width * 2 ** stage, stride, self.dtype,
                       name=f'stage_{stage + 1}_block_{block + 1}')(x, train)
    x = jnp.mean(x, axis=(1, 2))  # [B, 4 width]
    logits = dense(self.schema.num_classes, 'mlp_out', self.dtype, 'classifier')(x)
    return logits.astype(jnp.float32)  # [B, num_classes]
