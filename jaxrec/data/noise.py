"""Synthetic label noise, for studies of training under noisy labels.

:func:`symmetric_label_noise` is the usual symmetric (uniform) noise model: each label is, with
probability ``rate``, replaced by a class drawn uniformly from the other ``num_classes - 1``
classes. For binary CTR labels (``num_classes=2``) that is a flip of 0 and 1 with probability
``rate``. The draws are a pure function of ``seed`` and the number of labels: row ``i`` gets the
same decision and replacement whatever the labels are.
"""

from __future__ import annotations

import math

import numpy as np


def symmetric_label_noise(labels: np.ndarray, rate: float, num_classes: int,
                          seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Replaces each label, with probability ``rate``, by a uniformly drawn different class.

  Args:
    labels: class ids in ``[0, num_classes)``, any shape: ``int [...]`` class labels or
      ``float32 [...]`` 0/1 CTR labels (``num_classes=2``).
    rate: the probability of a replacement, in ``[0, 1)``.
    num_classes: number of classes, >= 2.
    seed: the random seed; the same seed gives the same output.

  Returns:
    ``noisy_labels`` (the dtype and shape of ``labels``) and ``flipped_mask`` (``bool``, same
    shape): True where the label was replaced, and then ``noisy_labels != labels``; elsewhere
    ``noisy_labels == labels``.

  Raises:
    ValueError: ``rate`` outside ``[0, 1)``, ``num_classes < 2``, or a label that is not a class id
      in ``[0, num_classes)`` (naming its index).
  """
  rate = float(rate)
  if not (math.isfinite(rate) and 0.0 <= rate < 1.0):
    raise ValueError(f'symmetric_label_noise: rate must be in [0, 1), got {rate}')
  if isinstance(num_classes, bool) or int(num_classes) != num_classes or num_classes < 2:
    raise ValueError(f'symmetric_label_noise: num_classes must be an integer >= 2, got '
                     f'{num_classes!r}')
  num_classes = int(num_classes)
  labels = np.asarray(labels)
  if labels.dtype.kind not in 'iuf':
    raise ValueError(f'symmetric_label_noise: labels must be integer or float class ids, got '
                     f'dtype {labels.dtype}')
  flat = labels.reshape(-1)
  bad = ~((flat >= 0) & (flat < num_classes) & (flat == np.floor(flat)))
  if bad.any():
    at = ', '.join(str(int(j)) for j in np.unravel_index(int(np.argmax(bad)), labels.shape))
    raise ValueError(f'symmetric_label_noise: labels[{at}] = {flat[np.argmax(bad)]} is not a '
                     f'class id in [0, {num_classes})')
  rng = np.random.default_rng(seed)
  flipped = rng.random(flat.size) < rate
  shift = rng.integers(1, num_classes, flat.size)  # uniform on the other num_classes - 1 classes
  ids = flat.astype(np.int64)
  noisy = np.where(flipped, (ids + shift) % num_classes, ids).astype(labels.dtype)
  return noisy.reshape(labels.shape), flipped.reshape(labels.shape)
