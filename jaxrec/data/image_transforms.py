"""Image augmentation in pure JAX, jit-able with static shapes.

:func:`random_crop_flip` is the standard augmentation of small-image classification (CIFAR,
Fashion-MNIST): pad each image with zeros, crop it back to its size at a random offset, and mirror
it left-right with probability 1/2. Each example draws its own offset and flip from one key, so
the same key gives the same batch. It is two steps, :func:`crop_flip_params` (the random draws)
and :func:`crop_flip` (the deterministic crop and flip), so the draws can be inspected or reused::

  images = random_crop_flip(batch['image'], jax.random.fold_in(key, step))   # [B, H, W, C]
  aug = jax.jit(random_crop_flip, static_argnames=('padding', 'flip'))
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def crop_flip_params(key: jax.Array, batch_size: int, padding: int = 2,
                     flip: bool = True) -> tuple[jax.Array, jax.Array]:
  """The per-example random draws of :func:`random_crop_flip`.

  Args:
    key: a PRNG key.
    batch_size: examples in the batch (static).
    padding: zero padding on each side (static, >= 0).
    flip: whether to draw flips; False gives no flips.

  Returns:
    ``offsets``: ``int32 [batch_size, 2]``, the (row, column) of each crop's top-left corner in the
    padded image, each uniform on ``[0, 2 * padding]``; ``flips``: ``bool [batch_size]``, True with
    probability 1/2 where the crop is mirrored left-right.
  """
  _check_padding(padding)
  k_offset, k_flip = jax.random.split(key)
  offsets = jax.random.randint(k_offset, (batch_size, 2), 0, 2 * padding + 1, dtype=jnp.int32)
  if flip:
    flips = jax.random.bernoulli(k_flip, 0.5, (batch_size,))
  else:
    flips = jnp.zeros((batch_size,), bool)
  return offsets, flips


def crop_flip(images: jax.Array, offsets: jax.Array, flips: jax.Array,
              padding: int = 2) -> jax.Array:
  """Crops each zero-padded example at its offset and mirrors the flipped ones.

  Args:
    images: ``[B, H, W, C]``, any dtype.
    offsets: ``int32 [B, 2]`` in ``[0, 2 * padding]`` (see :func:`crop_flip_params`).
    flips: ``bool [B]``.
    padding: zeros added on each side of H and W before cropping (static, >= 0).

  Returns:
    ``[B, H, W, C]`` (the dtype of ``images``): example ``i`` is
    ``pad(images[i])[r:r + H, c:c + W]`` for ``(r, c) = offsets[i]``, reversed along W where
    ``flips[i]``.
  """
  _check_padding(padding)
  if images.ndim != 4:
    raise ValueError(f'random_crop_flip: images must be [batch, height, width, channels], got '
                     f'shape {images.shape}')
  _, h, w, c = images.shape
  padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))

  def one(image, offset, flipped):  # [H + 2p, W + 2p, C], [2], [] -> [H, W, C]
    crop = jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, c))
    return jnp.where(flipped, crop[:, ::-1, :], crop)

  return jax.vmap(one)(padded, offsets, flips)


def random_crop_flip(images: jax.Array, key: jax.Array, padding: int = 2,
                     flip: bool = True) -> jax.Array:
  """Random crop of the zero-padded images and random horizontal flip, per example.

  Args:
    images: ``float32 [B, H, W, C]`` (any dtype works).
    key: a PRNG key; the same key gives the same output.
    padding: zeros added on each side before cropping back to ``H x W`` (static, >= 0).
    flip: mirror each example left-right with probability 1/2 (static).

  Returns:
    ``[B, H, W, C]``, the dtype of ``images``. With ``padding=0`` and ``flip=False``, ``images``.
  """
  offsets, flips = crop_flip_params(key, images.shape[0], padding, flip)
  return crop_flip(images, offsets, flips, padding)


def _check_padding(padding: int) -> None:
  if not isinstance(padding, int) or isinstance(padding, bool) or padding < 0:
    raise ValueError(f'random_crop_flip: padding must be a static int >= 0, got {padding!r}')
