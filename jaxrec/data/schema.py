"""Feature schema: what a CTR example holds, consumed by embeddings and models.

A CTR example has
  * ``sparse``: one id per one-hot categorical field, ``int32 [batch, num_sparse]``, each id in
    ``[0, field.vocab_size)``;
  * ``multi_hot_ids`` / ``multi_hot_lengths``: for multi-hot fields, ids padded to the field's
    ``max_length``: ``int32 [batch, num_multi_hot, max_multi_hot_length]`` and the number of valid
    ids per bag ``int32 [batch, num_multi_hot]`` (padding ids are 0 and ignored);
  * ``dense``: ``float32 [batch, num_dense]``;
  * ``label``: ``float32 [batch]`` in {0, 1};
  * ``weight``: ``float32 [batch]``, 1 for real rows and 0 for padding rows (the last batch of an
    epoch is padded, never dropped).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class SparseField:
  """A categorical field.

  Attributes:
    name: field name (also the embedding table name).
    vocab_size: number of ids, including any out-of-vocabulary bucket.
    max_length: 1 for a one-hot field; the padded bag length for a multi-hot field.
    pooling: how a multi-hot bag is pooled: 'sum' or 'mean'.
  """
  name: str
  vocab_size: int
  max_length: int = 1
  pooling: str = 'mean'

  def __post_init__(self):
    if self.vocab_size < 1:
      raise ValueError(f'field {self.name!r}: vocab_size must be >= 1, got {self.vocab_size}')
    if self.max_length < 1:
      raise ValueError(f'field {self.name!r}: max_length must be >= 1, got {self.max_length}')
    if self.pooling not in ('sum', 'mean'):
      raise ValueError(f"field {self.name!r}: pooling must be 'sum' or 'mean', got {self.pooling!r}")

  @property
  def multi_hot(self) -> bool:
    return self.max_length > 1


@dataclasses.dataclass(frozen=True)
class FeatureSchema:
  """The fields of a CTR dataset.

  Attributes:
    sparse: categorical fields, one-hot and multi-hot (in order; one-hot ones fill ``sparse``
      columns and multi-hot ones fill ``multi_hot_ids`` rows, each in schema order).
    dense: names of the dense (numeric) features.
  """
  sparse: tuple[SparseField, ...]
  dense: tuple[str, ...] = ()

  def __post_init__(self):
    names = [f.name for f in self.sparse] + list(self.dense)
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
      raise ValueError(f'duplicate feature names in schema: {dup}')

  @property
  def one_hot_fields(self) -> tuple[SparseField, ...]:
    return tuple(f for f in self.sparse if not f.multi_hot)

  @property
  def multi_hot_fields(self) -> tuple[SparseField, ...]:
    return tuple(f for f in self.sparse if f.multi_hot)

  @property
  def num_sparse(self) -> int:
    """Number of one-hot fields (columns of ``sparse``)."""
    return len(self.one_hot_fields)

  @property
  def num_multi_hot(self) -> int:
    return len(self.multi_hot_fields)

  @property
  def max_multi_hot_length(self) -> int:
    return max((f.max_length for f in self.multi_hot_fields), default=0)

  @property
  def num_dense(self) -> int:
    return len(self.dense)

  @property
  def num_fields(self) -> int:
    """Number of categorical fields (one embedding each after pooling)."""
    return len(self.sparse)

  @property
  def vocab_sizes(self) -> tuple[int, ...]:
    return tuple(f.vocab_size for f in self.sparse)

  def to_dict(self) -> dict:
    return {'sparse': [dataclasses.asdict(f) for f in self.sparse], 'dense': list(self.dense)}

  @classmethod
  def from_dict(cls, d: dict) -> 'FeatureSchema':
    return cls(sparse=tuple(SparseField(**f) for f in d['sparse']), dense=tuple(d.get('dense', ())))

  def to_json(self) -> str:
    return json.dumps(self.to_dict())

  @classmethod
  def from_json(cls, s: str) -> 'FeatureSchema':
    return cls.from_dict(json.loads(s))


def one_hot_schema(names: Sequence[str], vocab_sizes: Sequence[int],
                   dense: Sequence[str] = ()) -> FeatureSchema:
  """A schema of one-hot fields, e.g. ``one_hot_schema(['user', 'item'], [957, 4082])``."""
  if len(names) != len(vocab_sizes):
    raise ValueError(f'{len(names)} names but {len(vocab_sizes)} vocab sizes')
  return FeatureSchema(tuple(SparseField(n, int(v)) for n, v in zip(names, vocab_sizes)),
                       tuple(dense))


def check_ids(schema: FeatureSchema, sparse: np.ndarray, where: str = 'batch') -> None:
  """Raises ValueError naming the field and row if any one-hot id is outside its vocabulary."""
  sizes = np.array([f.vocab_size for f in schema.one_hot_fields], dtype=np.int64)
  bad = (sparse < 0) | (sparse >= sizes[None, :])
  if bad.any():
    row, col = np.argwhere(bad)[0]
    f = schema.one_hot_fields[col]
    raise ValueError(f'{where}: row {row}: field {f.name!r} id {int(sparse[row, col])} is outside '
                     f'[0, {f.vocab_size})')


def check_multi_hot(schema: FeatureSchema, ids: np.ndarray, lengths: np.ndarray,
                    where: str = 'batch') -> None:
  """Raises ValueError naming the field and row for a bad bag length or an id out of range."""
  for j, f in enumerate(schema.multi_hot_fields):
    ln = lengths[:, j]
    bad = (ln < 0) | (ln > f.max_length)
    if bad.any():
      row = int(np.argmax(bad))
      raise ValueError(f'{where}: row {row}: field {f.name!r} bag length {int(ln[row])} is outside '
                       f'[0, {f.max_length}]')
    valid = np.arange(ids.shape[2])[None, :] < ln[:, None]
    fid = ids[:, j, :]
    bad = valid & ((fid < 0) | (fid >= f.vocab_size))
    if bad.any():
      row, pos = np.argwhere(bad)[0]
      raise ValueError(f'{where}: row {row}: field {f.name!r} id {int(fid[row, pos])} is outside '
                       f'[0, {f.vocab_size})')


@dataclasses.dataclass(frozen=True)
class ImageSchema:
  """What an image-classification example holds, consumed by the vision models.

  An example has ``image``: ``float32 [batch, height, width, channels]`` (normalised by the
  dataset's mean and std), ``label``: ``int32 [batch]`` in ``[0, num_classes)`` and ``weight`` as
  for CTR batches (0 on padding rows).

  Attributes:
    height, width, channels: the image shape.
    num_classes: number of classes.
    class_names: one name per class (``()`` when the dataset names none).
  """
  height: int
  width: int
  channels: int
  num_classes: int
  class_names: tuple[str, ...] = ()

  kind = 'image'  # the ``kind`` of its dict (a FeatureSchema dict has none)

  def __post_init__(self):
    for name in ('height', 'width', 'channels', 'num_classes'):
      if int(getattr(self, name)) < 1:
        raise ValueError(f'ImageSchema.{name} must be >= 1, got {getattr(self, name)}')
    if self.class_names and len(self.class_names) != self.num_classes:
      raise ValueError(f'ImageSchema: {len(self.class_names)} class_names for '
                       f'{self.num_classes} classes')

  @property
  def shape(self) -> tuple[int, int, int]:
    return (self.height, self.width, self.channels)

  def to_dict(self) -> dict:
    return {'kind': self.kind, 'height': self.height, 'width': self.width,
            'channels': self.channels, 'num_classes': self.num_classes,
            'class_names': list(self.class_names)}

  @classmethod
  def from_dict(cls, d: dict) -> 'ImageSchema':
    return cls(height=d['height'], width=d['width'], channels=d['channels'],
               num_classes=d['num_classes'], class_names=tuple(d.get('class_names', ())))


MODALITY_NAMES = ('text', 'image')  # modality id -> name, of a SequenceSchema
NUM_SPECIAL = 5  # PAD, BOS, EOS, BOI, EOI


@dataclasses.dataclass(frozen=True)
class SequenceSchema:
  """Packed mixed-modal token sequences (text and image tokens), consumed by the mixed-modal LMs.

  Token ids: text ``[0, text_vocab_size)``; then the special tokens PAD, BOS, EOS, BOI (begin of
  image), EOI (end of image), in that order; then image codes ``[image_offset, vocab_size)``, one
  per ``patch_size x patch_size`` patch of an image in raster order. Modality ids: 0 = text (the
  special tokens too), 1 = image (the code tokens only).

  An example has ``inputs``, ``label`` (the next token of each input), ``modality``,
  ``target_modality``: ``int32 [batch, seq_len]``, ``loss_mask``: ``float32 [batch, seq_len]`` and
  ``weight`` as for CTR batches (0 on padding rows). Every row holds exactly
  ``images_per_sequence`` whole images, so per row ``modality_counts[m]`` inputs (and as many
  targets) are of modality ``m``: a static shape the models rely on.

  Attributes:
    seq_len: tokens per row.
    images_per_sequence: images per row.
    text_vocab_size: text token ids.
    codebook_size: image codes.
    image_height, image_width: pixels of an image.
    patch_size: pixels on each side of the square patch one image token stands for.
    class_names: the image classes (named in the caption before each image).
  """
  seq_len: int
  images_per_sequence: int
  text_vocab_size: int
  codebook_size: int
  image_height: int = 28
  image_width: int = 28
  patch_size: int = 4
  class_names: tuple[str, ...] = ()

  kind = 'sequence'
  num_modalities = len(MODALITY_NAMES)
  modality_names = MODALITY_NAMES

  def __post_init__(self):
    object.__setattr__(self, 'class_names', tuple(self.class_names))
    for name in ('seq_len', 'text_vocab_size', 'codebook_size', 'image_height', 'image_width',
                 'patch_size', 'images_per_sequence'):
      value = getattr(self, name)
      low = 0 if name == 'images_per_sequence' else 1
      if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f'SequenceSchema.{name} must be an integer >= {low}, got {value!r}')
    if self.image_height % self.patch_size or self.image_width % self.patch_size:
      raise ValueError(f'SequenceSchema: the {self.image_height}x{self.image_width} image does not '
                       f'divide into {self.patch_size}x{self.patch_size} patches')
    block = self.tokens_per_image + 2  # BOI, the codes, EOI
    if self.images_per_sequence * block > self.seq_len + 1:
      raise ValueError(f'SequenceSchema: seq_len {self.seq_len} cannot hold '
                       f'{self.images_per_sequence} images of {block} tokens each (BOI, '
                       f'{self.tokens_per_image} codes, EOI)')

  @property
  def pad_id(self) -> int:
    return self.text_vocab_size

  @property
  def bos_id(self) -> int:
    return self.text_vocab_size + 1

  @property
  def eos_id(self) -> int:
    return self.text_vocab_size + 2

  @property
  def boi_id(self) -> int:
    return self.text_vocab_size + 3

  @property
  def eoi_id(self) -> int:
    return self.text_vocab_size + 4

  @property
  def special_ids(self) -> dict[str, int]:
    return {'pad': self.pad_id, 'bos': self.bos_id, 'eos': self.eos_id, 'boi': self.boi_id,
            'eoi': self.eoi_id}

  @property
  def image_offset(self) -> int:
    """Id of image code 0."""
    return self.text_vocab_size + NUM_SPECIAL

  @property
  def vocab_size(self) -> int:
    return self.image_offset + self.codebook_size

  @property
  def tokens_per_image(self) -> int:
    return (self.image_height // self.patch_size) * (self.image_width // self.patch_size)

  @property
  def modality_counts(self) -> tuple[int, ...]:
    """Tokens of each modality per row (inputs and targets alike): (text, image)."""
    image = self.images_per_sequence * self.tokens_per_image
    return (self.seq_len - image, image)

  def to_dict(self) -> dict:
    """The fields, and the derived ids and counts (for readers of the JSON; checked on load)."""
    return {'kind': self.kind, 'seq_len': self.seq_len,
            'images_per_sequence': self.images_per_sequence,
            'text_vocab_size': self.text_vocab_size, 'codebook_size': self.codebook_size,
            'image_height': self.image_height, 'image_width': self.image_width,
            'patch_size': self.patch_size, 'class_names': list(self.class_names),
            'vocab_size': self.vocab_size, 'special_ids': self.special_ids,
            'image_offset': self.image_offset, 'tokens_per_image': self.tokens_per_image,
            'num_modalities': self.num_modalities, 'modality_names': list(self.modality_names),
            'modality_counts': list(self.modality_counts)}

  @classmethod
  def from_dict(cls, d: dict) -> 'SequenceSchema':
    """The schema of ``to_dict``; ValueError naming a derived value that does not match."""
    fields = [f.name for f in dataclasses.fields(cls)]
    missing = [f for f in fields if f not in d and f != 'class_names']
    if missing:
      raise ValueError(f'SequenceSchema dict: missing {missing}')
    schema = cls(**{f: tuple(d[f]) if f == 'class_names' else d[f] for f in fields if f in d})
    derived = schema.to_dict()
    for key in derived.keys() - set(fields) - {'kind'}:
      if key in d and json.loads(json.dumps(d[key])) != json.loads(json.dumps(derived[key])):
        raise ValueError(f'SequenceSchema dict: {key} is {d[key]!r}, but the fields give '
                         f'{derived[key]!r}')
    return schema


def schema_from_dict(d: dict):
  """The schema a ``to_dict`` gave: an ImageSchema for ``kind == 'image'``, a SequenceSchema for
  ``kind == 'sequence'``, else a FeatureSchema."""
  if d.get('kind') == ImageSchema.kind:
    return ImageSchema.from_dict(d)
  if d.get('kind') == SequenceSchema.kind:
    return SequenceSchema.from_dict(d)
  return FeatureSchema.from_dict(d)
