"""Tests of jaxrec.data.image_transforms against a numpy reference using the same draws."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.data.image_transforms import crop_flip, crop_flip_params, random_crop_flip


def images(batch: int = 8, h: int = 6, w: int = 5, c: int = 2, seed: int = 0) -> np.ndarray:
  """``float32 [batch, h, w, c]`` with distinct nonzero values (so a crop identifies its offset)."""
  return np.random.default_rng(seed).uniform(1, 2, (batch, h, w, c)).astype(np.float32)


def reference(x: np.ndarray, offsets: np.ndarray, flips: np.ndarray, padding: int) -> np.ndarray:
  """Per example: zero-pad, crop at the offset, mirror left-right if flipped."""
  _, h, w, _ = x.shape
  out = np.empty_like(x)
  for i in range(len(x)):
    p = np.pad(x[i], ((padding, padding), (padding, padding), (0, 0)))
    r, c = offsets[i]
    crop = p[r:r + h, c:c + w]
    out[i] = crop[:, ::-1] if flips[i] else crop
  return out


def test_identity_without_padding_and_flip():
  x = images()
  out = random_crop_flip(jnp.asarray(x), jax.random.key(0), padding=0, flip=False)
  np.testing.assert_array_equal(np.asarray(out), x)


@pytest.mark.parametrize('padding,flip', [(2, True), (1, False), (0, True), (3, True)])
def test_equals_numpy_reference_with_the_same_draws(padding, flip):
  x = images(batch=64)
  key = jax.random.key(7)
  offsets, flips = crop_flip_params(key, 64, padding, flip)
  offsets, flips = np.asarray(offsets), np.asarray(flips)
  assert offsets.dtype == np.int32 and offsets.shape == (64, 2) and flips.shape == (64,)
  assert offsets.min() >= 0 and offsets.max() <= 2 * padding
  if not flip:
    assert not flips.any()
  out = np.asarray(random_crop_flip(jnp.asarray(x), key, padding, flip))
  np.testing.assert_array_equal(out, reference(x, offsets, flips, padding))


def test_every_output_is_a_crop_of_the_padded_input():
  """Without trusting the draws: each output equals some crop (and maybe mirror) of its input."""
  x, padding = images(batch=16), 2
  out = np.asarray(random_crop_flip(jnp.asarray(x), jax.random.key(3), padding))
  _, h, w, _ = x.shape
  for i in range(len(x)):
    p = np.pad(x[i], ((padding, padding), (padding, padding), (0, 0)))
    crops = [p[r:r + h, c:c + w] for r in range(2 * padding + 1) for c in range(2 * padding + 1)]
    crops += [crop[:, ::-1] for crop in crops]
    assert sum(np.array_equal(out[i], crop) for crop in crops) == 1, i


def test_deterministic_by_key_and_per_example():
  x = jnp.asarray(images(batch=32))
  a = random_crop_flip(x, jax.random.key(1))
  np.testing.assert_array_equal(np.asarray(a), np.asarray(random_crop_flip(x, jax.random.key(1))))
  b = random_crop_flip(x, jax.random.key(2))
  assert not np.array_equal(np.asarray(a), np.asarray(b))
  offsets, _ = crop_flip_params(jax.random.key(1), 32)
  assert len({tuple(o) for o in np.asarray(offsets)}) > 1  # examples draw their own offsets


def test_draw_frequencies():
  offsets, flips = crop_flip_params(jax.random.key(11), 4096, padding=2)
  # flip ~ Bernoulli(1/2): std of the fraction 0.0078, tolerance 0.05 (6 std).
  assert abs(float(np.mean(flips)) - 0.5) < 0.05
  # each offset ~ uniform on {0..4}: std of a frequency over 8192 draws 0.0044, tolerance 0.03.
  freq = np.bincount(np.asarray(offsets).ravel(), minlength=5) / offsets.size
  np.testing.assert_allclose(freq, 0.2, atol=0.03)


def test_under_jit_static_shapes():
  x = jnp.asarray(images(batch=4, h=28, w=28, c=1))
  aug = jax.jit(random_crop_flip, static_argnames=('padding', 'flip'))
  out = aug(x, jax.random.key(5), padding=2)
  assert out.shape == (4, 28, 28, 1) and out.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(out), np.asarray(random_crop_flip(x, jax.random.key(5))))
  keys = jax.random.split(jax.random.key(6), 3)  # a fresh key per step, one compiled function
  outs = [aug(x, k) for k in keys]
  assert all(o.shape == x.shape for o in outs)
  applied = jax.jit(crop_flip, static_argnames=('padding',))
  offsets, flips = crop_flip_params(jax.random.key(5), 4)
  np.testing.assert_array_equal(np.asarray(applied(x, offsets, flips, padding=2)), np.asarray(out))


def test_bad_arguments():
  x = jnp.asarray(images())
  with pytest.raises(ValueError, match='padding must be a static int >= 0'):
    random_crop_flip(x, jax.random.key(0), padding=-1)
  with pytest.raises(ValueError, match=r'images must be \[batch, height, width, channels\]'):
    random_crop_flip(x[0], jax.random.key(0))
