"""Mixed-modal sequences: Frappe app descriptions interleaved with tokenized Fashion-MNIST images.

For the Mixture-of-Transformers study: one vocabulary (:class:`~jaxrec.data.schema.SequenceSchema`)
holds BPE text tokens (:mod:`jaxrec.data.text_tokens`), the special tokens PAD BOS EOS BOI EOI
and k-means patch codes (:mod:`jaxrec.data.image_tokens`).

A row is one packed sequence of ``seq_len`` tokens with exactly ``images_per_sequence`` image
blocks, so the number of image tokens per row is static (``schema.modality_counts``). An image
block is a caption naming its class, then BOI, the image's codes, EOI::

  ' a photo of a trouser:' BOI c_0 ... c_48 EOI

The rest is description text: ``BOS desc EOS BOS desc EOS ...`` of the split's apps, one
contiguous window of that stream (starting anywhere, crossing descriptions) cut into
``images_per_sequence + 1`` pieces at drawn points, the blocks going between them. So images sit
at varying positions, with text before them. ``seq_len + 1`` tokens are built; ``inputs`` are the
first ``seq_len``, ``label`` the last ``seq_len`` (next-token targets). ``loss_mask`` is 0 only
where the target is PAD, which fills the end of a row only when the split's whole text stream is
shorter than a row's text (never on Frappe).

Rows are built on demand, a pure function of their arguments (descriptions are tokenized and
images encoded once, at load):

* 'train' (``resample``): with ``batches(shuffle=True, seed, epoch)``, row ``r`` is drawn from
  ``np.random.default_rng([split_seed_key..., seed, epoch, r])`` and its images are
  ``perm[(r * N + j) % images]`` of a permutation of the split's images seeded by
  ``(seed, epoch)``: new rows every epoch, no image twice in an epoch while ``rows * N`` does not
  exceed the images. Without ``shuffle``, rows are the fixed rows below.
* 'valid' (fixed): row ``r`` does not depend on ``seed``, ``epoch`` or ``shuffle``, so evaluation
  is comparable across epochs and runs.

Splits: images by :func:`jaxrec.data.fashion_mnist.split_rows` (``validation_per_class`` per class,
``split_seed``; by default the Fashion-MNIST loader's validation split) and apps by
:func:`jaxrec.data.text_tokens.split_apps` (``valid_app_fraction`` of the distinct descriptions,
``split_seed``). The tokenizer is trained on the train apps' descriptions, the codebook on the
train images' patches; 'train' rows use only train images and text, 'valid' rows only validation
images and text.

Measured on this project's 2-core CPU (shared with another job), defaults, ``../shared/data``:
:func:`load` takes 14-17 s without a cache (BPE training ~2 s, tokenizing ~2 s, reading the
images ~0.4 s, k-means ~5.5 s, encoding the 60,000 images ~3 s) and 6-8 s with a warm
``cache_dir``; a batch of 64 rows takes 5-12 ms. Text: 1,705,889 train tokens (3,179 apps) and
192,670 valid tokens (353 apps). A default row: 98 image tokens (2 x 49) and 158 text tokens, of
which 2 x (BOI, EOI) and 2 x 7-13 caption tokens. Codebook: validation reconstruction MAE 11.3
grey levels (of 255).

Nothing is downloaded; the files come from :data:`DOWNLOAD_URLS` (Frappe's ``meta.csv`` is inside
the zip of the first):
https://raw.githubusercontent.com/irecsys/CARSKit/master/context-aware_data_sets/Mobile_Frappe.zip
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import TYPE_CHECKING, Iterator, Optional, Sequence, Union

import numpy as np

from jaxrec.data import fashion_mnist, image_tokens, text_tokens
from jaxrec.data.dataset import Batch, num_batches, pad_batch
from jaxrec.data.errors import DataFileNotFoundError, DataFormatError
from jaxrec.data.image_tokens import Codebook
from jaxrec.data.schema import SequenceSchema, schema_from_dict
from jaxrec.data.tabular import STATE_VERSION, LoadedDataset, check_state

if TYPE_CHECKING:
  import tokenizers  # an extra: imported when text is tokenized (text_tokens.require_tokenizers)

NAME = 'mixed_modal'
FRAPPE_DIR = 'frappe_raw'
META_FILE = 'meta.csv'
FASHION_DIR = 'fashion-mnist'
DOWNLOAD_URLS = {
    META_FILE: 'https://raw.githubusercontent.com/irecsys/CARSKit/master/context-aware_data_sets/'
               'Mobile_Frappe.zip',
    **{f: fashion_mnist.DOWNLOAD_URLS[f] for f in fashion_mnist.TRAIN_FILES},
}
TEXT, IMAGE = 0, 1  # modality ids (schema.modality_names)
PATCH = 4  # pixels on each side of an image token's patch
SPECIAL_MARKERS = ('<|pad|>', '<|bos|>', '<|eos|>')  # how decode_tokens shows PAD, BOS, EOS
_CACHE_VERSION = 1

Segment = tuple[str, Union[str, np.ndarray]]


def caption_text(class_name: str) -> str:
  """``' a photo of a trouser:'``, ``' a photo of an ankle boot:'`` (leading space: mid-text)."""
  name = class_name.lower()
  return f' a photo of {"an" if name[:1] in "aeiou" else "a"} {name}:'


def modality_of(ids: np.ndarray, schema: SequenceSchema) -> np.ndarray:
  """``int32 [...]``: IMAGE (1) for image-code ids, TEXT (0) for all others."""
  return (np.asarray(ids) >= schema.image_offset).astype(np.int32)


def _first_outside(values: np.ndarray, size: int) -> Optional[tuple[tuple[int, ...], int]]:
  """(position, value) of the first entry of ``values`` outside ``[0, size)``, or None."""
  values = np.asarray(values)
  bad = (values < 0) | (values >= size)
  if not bad.any():
    return None
  pos = tuple(int(i) for i in np.argwhere(bad)[0])
  return pos, int(values[pos])


def check_modality(modality: np.ndarray, schema: SequenceSchema, where: str = 'modality') -> None:
  """ValueError naming ``where``, the position and the value of a modality id outside
  ``[0, schema.num_modalities)``."""
  found = _first_outside(modality, schema.num_modalities)
  if found:
    raise ValueError(f'{where}: position {found[0]}: unknown modality id {found[1]}; known: '
                     f'{dict(enumerate(schema.modality_names))}')


def check_tokens(ids: np.ndarray, schema: SequenceSchema, where: str = 'tokens') -> None:
  """ValueError naming ``where``, the position and the value of an id outside the vocabulary."""
  found = _first_outside(ids, schema.vocab_size)
  if found:
    raise ValueError(f'{where}: position {found[0]}: token id {found[1]} is outside '
                     f'[0, {schema.vocab_size})')


@dataclasses.dataclass(frozen=True)
class MixedModalCodec:
  """The vocabulary's two halves: text by the BPE, images by the codebook.

  Attributes:
    schema: the sequence layout; ``class_names`` give the captions.
    tokenizer: the byte-level BPE (at most ``schema.text_vocab_size`` tokens).
    codebook: ``schema.codebook_size`` codes of the schema's image geometry.
  """
  schema: SequenceSchema
  tokenizer: tokenizers.Tokenizer
  codebook: Codebook

  def __post_init__(self):
    s, c = self.schema, self.codebook
    if (c.size, c.patch, c.height, c.width) != (s.codebook_size, s.patch_size, s.image_height,
                                                s.image_width):
      raise ValueError(f'{NAME}: the codebook ({c.size} codes, {c.patch}x{c.patch} patches of '
                       f'{c.height}x{c.width} images) does not match the schema ('
                       f'{s.codebook_size} codes, {s.patch_size}x{s.patch_size} patches of '
                       f'{s.image_height}x{s.image_width} images)')
    if self.tokenizer.get_vocab_size() > s.text_vocab_size:
      raise ValueError(f'{NAME}: the tokenizer has {self.tokenizer.get_vocab_size()} tokens, '
                       f'more than text_vocab_size {s.text_vocab_size}')
    if not s.class_names:
      raise ValueError(f'{NAME}: the schema names no image classes (captions need them)')

  def captions(self) -> list[np.ndarray]:
    """``int32 [caption_tokens]`` per class."""
    return text_tokens.encode_texts(self.tokenizer, [caption_text(n) for n in
                                                     self.schema.class_names])

  def image_block(self, caption: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """``int32 [caption + tokens_per_image + 2]``: caption, BOI, ``codes + image_offset``, EOI."""
    s = self.schema
    return np.concatenate([caption, [s.boi_id], np.asarray(codes) + s.image_offset,
                           [s.eoi_id]]).astype(np.int32)

  def decode_tokens(self, ids: Sequence[int]) -> list[Segment]:
    """The text and images of a token sequence (a row's tokens, inputs, or generated ids).

    Returns:
      Segments in order: ``('text', str)`` (PAD, BOS, EOS shown as :data:`SPECIAL_MARKERS`) and
      ``('image', uint8 [H, W])`` per BOI ... EOI block (the EOI may be missing at the very end).

    Raises:
      ValueError naming the position: an id outside the vocabulary, an image code outside a
      block, EOI without BOI, a non-code token inside a block, a block without exactly
      ``tokens_per_image`` codes.
    """
    s = self.schema
    ids = np.asarray(ids)
    if ids.ndim != 1:
      raise ValueError(f'decode_tokens: ids must be 1-d, got shape {list(ids.shape)}')
    check_tokens(ids, s, 'decode_tokens')
    out: list[Segment] = []
    text: list[str] = []
    run: list[int] = []

    def flush_run():
      if run:
        text.append(self.tokenizer.decode(run))
        run.clear()

    i = 0
    while i < len(ids):
      t = int(ids[i])
      if t < s.text_vocab_size:
        run.append(t)
      elif t in (s.pad_id, s.bos_id, s.eos_id):
        flush_run()
        text.append(SPECIAL_MARKERS[t - s.pad_id])
      elif t == s.boi_id:
        flush_run()
        if text:
          out.append(('text', ''.join(text)))
          text = []
        end = i + 1
        while end < len(ids) and ids[end] >= s.image_offset:
          end += 1
        if end - i - 1 != s.tokens_per_image:
          raise ValueError(f'decode_tokens: the image block at position {i} has {end - i - 1} '
                           f'codes, expected {s.tokens_per_image}')
        if end < len(ids) and ids[end] != s.eoi_id:
          raise ValueError(f'decode_tokens: position {end}: token {int(ids[end])} inside the '
                           f'image block at position {i}, expected EOI ({s.eoi_id})')
        codes = ids[i + 1:end] - s.image_offset
        out.append(('image', self.codebook.decode(codes[None])[0]))
        i = end  # the EOI (or the end)
      elif t == s.eoi_id:
        raise ValueError(f'decode_tokens: position {i}: EOI outside an image block')
      else:
        raise ValueError(f'decode_tokens: position {i}: image code {t} outside an image block')
      i += 1
    flush_run()
    if text:
      out.append(('text', ''.join(text)))
    return out

  def to_state(self) -> dict:
    """JSON-serialisable: the schema, the tokenizer JSON and the centroids."""
    c = self.codebook
    return {'schema': self.schema.to_dict(), 'tokenizer': self.tokenizer.to_str(),
            'codebook': {'centroids': c.centroids.tolist(), 'patch': c.patch, 'height': c.height,
                         'width': c.width}}

  @classmethod
  def from_state(cls, state: dict) -> 'MixedModalCodec':
    """The codec of a :func:`load` state (e.g. a run's ``dataset_state.json``), to decode."""
    schema = schema_from_dict(state['schema'])
    if not isinstance(schema, SequenceSchema):
      raise ValueError(f'{NAME} state: its schema is not a sequence schema: {state["schema"]}')
    c = state['codebook']
    return cls(schema, text_tokens.require_tokenizers().Tokenizer.from_str(state['tokenizer']),
               Codebook(np.asarray(c['centroids'], np.float32), c['patch'], c['height'],
                        c['width']))


def pack_row(text: np.ndarray, blocks: Sequence[np.ndarray], cuts: np.ndarray, length: int,
             pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """Interleaves text and blocks: ``text[:c0] b0 text[c0:c1] b1 ... text[c_last:]`` then PADs.

  Args:
    text: ``int32 [T]``.
    blocks: one ``int32 [len_j]`` per cut.
    cuts: ``int [len(blocks)]``, non-decreasing positions in ``[0, T]``.
    length: tokens wanted; ``T + sum(len_j) <= length``, the rest is PAD.

  Returns:
    ``int32 [length]`` tokens and ``int64 [len(blocks)]``, the position where each block starts.
  """
  parts, starts, prev, pos = [], [], 0, 0
  for cut, block in zip(cuts, blocks):
    parts += [text[prev:cut], block]
    pos += cut - prev
    starts.append(pos)
    pos += len(block)
    prev = cut
  parts.append(text[prev:])
  tokens = np.concatenate(parts) if parts else np.zeros(0, np.int32)
  if len(tokens) > length:
    raise ValueError(f'pack_row: {len(tokens)} tokens do not fit in {length}')
  tokens = np.concatenate([tokens, np.full(length - len(tokens), pad_id, np.int32)])
  return tokens.astype(np.int32), np.asarray(starts, np.int64)


def row_arrays(tokens: np.ndarray, schema: SequenceSchema) -> dict[str, np.ndarray]:
  """The model's arrays of ``seq_len + 1`` tokens, each ``[seq_len]``: ``inputs``, ``label``,
  ``modality``, ``target_modality`` (int32) and ``loss_mask`` (float32, 0 where label is PAD)."""
  inputs, label = tokens[:-1], tokens[1:]
  return {'inputs': inputs, 'label': label, 'modality': modality_of(inputs, schema),
          'target_modality': modality_of(label, schema),
          'loss_mask': (label != schema.pad_id).astype(np.float32)}


@dataclasses.dataclass
class MixedModalDataset:
  """One split: a text stream and encoded images, from which rows are built on demand.

  Attributes:
    codec: the vocabulary (schema, tokenizer, codebook).
    text: ``int32 [tokens]``, the split's ``BOS desc EOS ...`` stream.
    image_codes: ``int32 [images, tokens_per_image]`` in ``[0, codebook_size)``.
    image_labels: ``int32 [images]``, class of each image.
    image_rows: ``int64 [images]``, each image's row in the images file (for audits).
    num_rows: sequences per epoch.
    seed_key: ints seeding this split's draws (the load seed and the split).
    resample: new rows per ``(seed, epoch)`` when batches are shuffled (train); else fixed rows.
    name: where the rows come from (used in error messages).
  """
  codec: MixedModalCodec
  text: np.ndarray
  image_codes: np.ndarray
  image_labels: np.ndarray
  image_rows: np.ndarray
  num_rows: int
  seed_key: tuple[int, ...] = (0,)
  resample: bool = True
  name: str = NAME

  def __post_init__(self):
    s = self.schema
    self.text = np.asarray(self.text, np.int32)
    self.image_codes = np.asarray(self.image_codes, np.int32)
    self.image_labels = np.asarray(self.image_labels, np.int32)
    self.image_rows = np.asarray(self.image_rows, np.int64)
    n = len(self.image_codes)
    if isinstance(self.num_rows, bool) or not isinstance(self.num_rows, (int, np.integer)) or (
        self.num_rows < 1):
      raise ValueError(f'{self.name}: num_rows must be an integer >= 1, got {self.num_rows!r}')
    if len(self.text) == 0 or self.text.ndim != 1:
      raise ValueError(f'{self.name}: the text stream must be a non-empty 1-d array, got shape '
                       f'{list(self.text.shape)}')
    bad = ((self.text < 0) | (self.text >= s.image_offset)
           | np.isin(self.text, (s.pad_id, s.boi_id, s.eoi_id)))
    if bad.any():
      i = int(np.argmax(bad))
      raise ValueError(f'{self.name}: text stream position {i}: id {int(self.text[i])} is not a '
                       f'text id (< {s.text_vocab_size}), BOS ({s.bos_id}) or EOS ({s.eos_id})')
    if self.image_codes.shape != (n, s.tokens_per_image) or n < 1:
      raise ValueError(f'{self.name}: image_codes must be [images >= 1, {s.tokens_per_image}], '
                       f'got {list(self.image_codes.shape)}')
    bad = (self.image_codes < 0) | (self.image_codes >= s.codebook_size)
    if bad.any():
      row, col = np.argwhere(bad)[0]
      raise ValueError(f'{self.name}: image {row}, token {col}: code '
                       f'{int(self.image_codes[row, col])} is outside [0, {s.codebook_size})')
    if self.image_labels.shape != (n,) or self.image_rows.shape != (n,):
      raise ValueError(f'{self.name}: image_labels and image_rows must be [{n}], got '
                       f'{list(self.image_labels.shape)} and {list(self.image_rows.shape)}')
    bad = (self.image_labels < 0) | (self.image_labels >= len(s.class_names))
    if bad.any():
      i = int(np.argmax(bad))
      raise ValueError(f'{self.name}: image {i}: label {int(self.image_labels[i])} is outside '
                       f'[0, {len(s.class_names)})')
    self._captions = self.codec.captions()
    longest = max(len(c) for c in self._captions) + s.tokens_per_image + 2
    if s.images_per_sequence * longest > s.seq_len + 1:
      raise ValueError(f'{self.name}: seq_len {s.seq_len} cannot hold {s.images_per_sequence} '
                       f'image blocks of up to {longest} tokens (caption, BOI, '
                       f'{s.tokens_per_image} codes, EOI)')
    self._fixed_order = np.random.default_rng([*self.seed_key, 0]).permutation(n)

  @property
  def schema(self) -> SequenceSchema:
    return self.codec.schema

  def __len__(self) -> int:
    return self.num_rows

  def _draws(self, shuffle: bool, seed: int, epoch: int) -> tuple[tuple[int, ...], np.ndarray]:
    """The seed prefix of the rows and the image order of one epoch."""
    if not (self.resample and shuffle):
      return (*self.seed_key, 0), self._fixed_order
    if seed < 0 or epoch < 0:
      raise ValueError(f'{self.name}: seed ({seed}) and epoch ({epoch}) must be >= 0')
    key = (*self.seed_key, 1, int(seed), int(epoch))
    return key, np.random.default_rng(key).permutation(len(self.image_codes))

  def _row(self, r: int, key: tuple[int, ...], order: np.ndarray) -> dict[str, np.ndarray]:
    s = self.schema
    k = s.images_per_sequence
    rng = np.random.default_rng([*key, r])
    images = order[(r * k + np.arange(k)) % len(order)]
    blocks = [self.codec.image_block(self._captions[self.image_labels[i]], self.image_codes[i])
              for i in images]
    text_len = s.seq_len + 1 - sum(len(b) for b in blocks)
    real = min(text_len, len(self.text))
    offset = int(rng.integers(0, len(self.text) - real + 1))
    cuts = np.sort(rng.integers(0, real + 1, k))
    tokens, starts = pack_row(self.text[offset:offset + real], blocks, cuts, s.seq_len + 1,
                              s.pad_id)
    out = row_arrays(tokens, s)
    out.update(tokens=tokens, block_starts=starts, image_index=images,
               image_rows=self.image_rows[images], image_labels=self.image_labels[images],
               text_offset=np.int64(offset))
    return out

  def row(self, r: int, *, shuffle: bool = False, seed: int = 0, epoch: int = 0) -> dict:
    """Row ``r`` as :meth:`batches` builds it, with what it was made of.

    Returns:
      The batch arrays of one row (``[seq_len]`` each, see :func:`row_arrays`), and ``tokens``:
      ``int32 [seq_len + 1]``, ``block_starts``: ``int64 [N]`` (caption start of each image block
      in ``tokens``), ``image_index``: ``int64 [N]`` (into this split's images), ``image_rows``
      (rows of the images file), ``image_labels``: ``int32 [N]``, ``text_offset`` (in ``text``).
    """
    if not 0 <= r < self.num_rows:
      raise IndexError(f'{self.name}: row {r} is outside [0, {self.num_rows})')
    return self._row(r, *self._draws(shuffle, seed, epoch))

  def batches(self, batch_size: int, *, shuffle: bool = False, seed: int = 0, epoch: int = 0,
              start: int = 0) -> Iterator[Batch]:
    """Yields ``ceil(num_rows / batch_size) - start`` batches; rows ``[b * B, (b + 1) * B)`` in
    batch ``b``, the last padded with rows of weight 0 (all arrays zero there). Skipped batches
    build no rows, so ``start`` resumes exactly. Rows depend on ``seed`` and ``epoch`` only when
    ``shuffle`` and the split ``resample`` s (train); otherwise they are the fixed rows.

    Yields:
      ``{'inputs', 'label', 'modality', 'target_modality': int32 [B, seq_len],
      'loss_mask': float32 [B, seq_len], 'weight': float32 [B]}``.
    """
    if batch_size < 1:
      raise ValueError(f'{self.name}: batch_size must be >= 1, got {batch_size}')
    key, order = self._draws(shuffle, seed, epoch)
    keys = ('inputs', 'label', 'modality', 'target_modality', 'loss_mask')
    for b in range(start, num_batches(self.num_rows, batch_size)):
      rows = [self._row(r, key, order)
              for r in range(b * batch_size, min((b + 1) * batch_size, self.num_rows))]
      yield pad_batch({k: np.stack([row[k] for row in rows]) for k in keys}, batch_size)

  def decode_tokens(self, ids: Sequence[int]) -> list[Segment]:
    """See :meth:`MixedModalCodec.decode_tokens`."""
    return self.codec.decode_tokens(ids)


def _cache_path(cache_dir: Optional[str], kind: str, key: dict, ext: str) -> Optional[str]:
  """``cache_dir/mixed_modal_<kind>_<sha of key>.<ext>`` (None without a cache_dir)."""
  if cache_dir is None:
    return None
  os.makedirs(cache_dir, exist_ok=True)
  digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
  return os.path.join(cache_dir, f'{NAME}_{kind}_{digest}.{ext}')


def _digest(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def fit_tokenizer(texts: Sequence[str], vocab_size: int,
                  cache_dir: Optional[str] = None) -> tokenizers.Tokenizer:
  """:func:`text_tokens.train_tokenizer`, reused from ``cache_dir`` when trained on the same
  texts with the same size (the cache file is keyed by both and the library version)."""
  key = {'version': _CACHE_VERSION, 'vocab_size': int(vocab_size),
         'library': text_tokens.require_tokenizers().__version__,
         'texts': _digest('\0'.join(texts).encode('utf-8'))}
  path = _cache_path(cache_dir, 'tokenizer', key, 'json')
  if path and os.path.isfile(path):
    return text_tokens.load_tokenizer(path)
  tok = text_tokens.train_tokenizer(texts, vocab_size)
  if path:
    text_tokens.save_tokenizer(tok, path)
  return tok


def fit_image_codebook(images: np.ndarray, size: int, patch: int, seed: int,
                       cache_dir: Optional[str] = None) -> Codebook:
  """:func:`image_tokens.fit_codebook`, reused from ``cache_dir`` when fitted on the same images
  with the same arguments."""
  key = {'version': _CACHE_VERSION, 'size': int(size), 'patch': int(patch), 'seed': int(seed),
         'max_patches': image_tokens.MAX_PATCHES, 'iterations': image_tokens.ITERATIONS,
         'shape': list(images.shape), 'images': _digest(np.ascontiguousarray(images).tobytes())}
  path = _cache_path(cache_dir, 'codebook', key, 'npz')
  if path and os.path.isfile(path):
    return Codebook.load(path)
  codebook = image_tokens.fit_codebook(images, size, patch=patch, seed=seed)
  if path:
    codebook.save(path)
  return codebook


def load(data_dir: str, *, seq_len: int = 256, images_per_sequence: int = 2,
         text_vocab_size: int = 2048, codebook_size: int = 256, train_rows: int = 20000,
         valid_rows: int = 1000, seed: int = 0, split_seed: int = 0,
         validation_per_class: int = 1000, valid_app_fraction: float = 0.1,
         cache_dir: Optional[str] = None) -> LoadedDataset:
  """:func:`load_dirs` of ``data_dir/frappe_raw`` and ``data_dir/fashion-mnist``."""
  if data_dir is None:
    raise DataFileNotFoundError(f'{NAME}: data_dir is required (the folder holding '
                                f'{FRAPPE_DIR}/{META_FILE} and {FASHION_DIR}/; download from '
                                f'{DOWNLOAD_URLS})')
  data_dir = os.fspath(data_dir)
  return load_dirs(os.path.join(data_dir, FRAPPE_DIR), os.path.join(data_dir, FASHION_DIR),
                   seq_len=seq_len, images_per_sequence=images_per_sequence,
                   text_vocab_size=text_vocab_size, codebook_size=codebook_size,
                   train_rows=train_rows, valid_rows=valid_rows, seed=seed,
                   split_seed=split_seed, validation_per_class=validation_per_class,
                   valid_app_fraction=valid_app_fraction, cache_dir=cache_dir)


def load_dirs(frappe_raw_dir: str, fashion_mnist_dir: str, *, seq_len: int = 256,
              images_per_sequence: int = 2, text_vocab_size: int = 2048,
              codebook_size: int = 256, train_rows: int = 20000, valid_rows: int = 1000,
              seed: int = 0, split_seed: int = 0, validation_per_class: int = 1000,
              valid_app_fraction: float = 0.1, cache_dir: Optional[str] = None) -> LoadedDataset:
  """Tokenizes the descriptions and images and returns the 'train' and 'valid' splits.

  Args:
    frappe_raw_dir: folder with Frappe's ``meta.csv``.
    fashion_mnist_dir: folder with ``train-images-idx3-ubyte[.gz]`` and its labels.
    seq_len: tokens per row.
    images_per_sequence: image blocks per row.
    text_vocab_size: BPE tokens (>= 256).
    codebook_size: image codes (k-means K).
    train_rows, valid_rows: rows per epoch of each split.
    seed: seeds the codebook's k-means and the rows' draws.
    split_seed: seeds which images (``validation_per_class`` per class) and which apps
      (``valid_app_fraction`` of the distinct descriptions) are held out for 'valid'.
    cache_dir: if given, the tokenizer and codebook are stored there and reused by a later load
      with the same inputs and parameters.

  Returns:
    A LoadedDataset whose schema is a SequenceSchema, whose splits are MixedModalDatasets and
    whose JSON-serialisable state holds the options, the tokenizer and the codebook
    (:meth:`MixedModalCodec.from_state` decodes with them).
  """
  for name, value in (('seed', seed), ('split_seed', split_seed)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
      raise ValueError(f'{NAME}: {name} must be an integer >= 0, got {value!r}')
  meta = os.path.join(os.fspath(frappe_raw_dir), META_FILE)
  apps = text_tokens.read_descriptions(meta)
  if not apps:
    raise ValueError(f'{meta}: no app has a description')
  items, texts = [a[0] for a in apps], [a[1] for a in apps]
  app_split = text_tokens.split_apps(items, texts, valid_app_fraction, split_seed)
  train_items = set(app_split['train'].tolist())
  split_texts = {'train': [t for i, t in apps if i in train_items],
                 'valid': [t for i, t in apps if i not in train_items]}
  tokenizer = fit_tokenizer(split_texts['train'], text_vocab_size, cache_dir)

  images_path = fashion_mnist.find_file(os.path.join(os.fspath(fashion_mnist_dir),
                                                     fashion_mnist.TRAIN_FILES[0]))
  images, labels = fashion_mnist.read_images_and_labels(images_path)
  images = images[..., 0]
  image_split = fashion_mnist.split_rows(labels, validation_per_class, split_seed,
                                         where=images_path)
  height, width = images.shape[1:]
  if height % PATCH or width % PATCH:
    raise DataFormatError(images_path, None, f'images are {height}x{width}, which does not divide '
                          f'into {PATCH}x{PATCH} patches (image tokens)')
  codebook = fit_image_codebook(images[image_split['train']], codebook_size, PATCH, seed,
                                cache_dir)
  schema = SequenceSchema(seq_len=seq_len, images_per_sequence=images_per_sequence,
                          text_vocab_size=text_vocab_size, codebook_size=codebook_size,
                          image_height=height, image_width=width, patch_size=codebook.patch,
                          class_names=fashion_mnist.CLASS_NAMES)
  codec = MixedModalCodec(schema, tokenizer, codebook)
  codes = codebook.encode(images)
  rows = {'train': train_rows, 'valid': valid_rows}
  splits = {}
  for i, (k, index) in enumerate(image_split.items()):
    stream = text_tokens.token_stream(tokenizer, split_texts[k], schema.bos_id, schema.eos_id)
    splits[k] = MixedModalDataset(codec, stream, codes[index], labels[index], index, rows[k],
                                  (int(seed), i), k == 'train', f'{NAME}[{k}]')
  options = {'seq_len': seq_len, 'images_per_sequence': images_per_sequence,
             'text_vocab_size': text_vocab_size, 'codebook_size': codebook_size,
             'train_rows': train_rows, 'valid_rows': valid_rows, 'seed': seed,
             'split_seed': split_seed, 'validation_per_class': validation_per_class,
             'valid_app_fraction': valid_app_fraction}
  state = {'dataset': NAME, 'version': STATE_VERSION, 'options': options,
           'num_rows': rows, 'valid_apps': app_split['valid'].tolist(),
           'text_tokens': {k: int(len(d.text)) for k, d in splits.items()},
           'images': {k: int(len(ix)) for k, ix in image_split.items()}, **codec.to_state()}
  return LoadedDataset(NAME, schema, splits, state)


def read_file(path: str, state: dict) -> MixedModalDataset:
  """Not supported: the mixed-modal data has no split files (its splits are built by load)."""
  check_state(state, NAME)
  raise ValueError(f'{NAME}: {path}: reading a split file is not supported; the splits are '
                   f'built by load() from {FRAPPE_DIR}/{META_FILE} and {FASHION_DIR}/')
