"""Text tokens of the mixed-modal data: Frappe app descriptions and a byte-level BPE.

Frappe's ``meta.csv`` (the original release, in ``frappe_raw/``) is a UTF-8 TSV with a header
line (``item``, ``package``, ..., ``description``, ...) and one app per line; fields are split on
tabs and lines on ``\\n`` only (descriptions hold ``\\u2028``, which ``str.splitlines`` would
split). A description that is empty or the file's missing-value marker ``unknown`` (550 of the
4,082 apps) is skipped; the other 3,532 are kept, in file order.

The tokenizer is a byte-level BPE (the ``tokenizers`` library: ByteLevel pre-tokenizer without a
prefix space, the 256 byte symbols as initial alphabet, no normaliser, no special tokens), so
``decode(encode(text)) == text`` for any text, and training on the same texts with the same
vocabulary size gives the same tokenizer.

Data flow::

  read_descriptions(meta.csv) -> [(item, text)]   # non-empty descriptions, file order
  -> split_apps(items, texts, fraction, seed)     # app ids of 'train' / 'valid'
  -> train_tokenizer(train texts, vocab_size)    # train apps only
  -> token_stream(tokenizer, texts, bos, eos)    # int32 [tokens]: BOS t.. EOS BOS t.. EOS ...
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import TYPE_CHECKING, Sequence

import numpy as np

from jaxrec.data.errors import DataFormatError, read_text

if TYPE_CHECKING:
  import tokenizers

MISSING = ('', 'unknown')  # descriptions that are skipped (after strip)
ITEM_COLUMN = 'item'
TEXT_COLUMN = 'description'


def require_tokenizers() -> ModuleType:
  """The ``tokenizers`` package (a jaxrec dependency, imported only when text is tokenized);
  ImportError saying how to install it."""
  try:
    import tokenizers  # pylint: disable=g-import-not-at-top,redefined-outer-name
  except ImportError as e:
    raise ImportError("the mixed-modal text needs the 'tokenizers' package (a jaxrec "
                      "dependency): pip install 'tokenizers>=0.15'") from e
  return tokenizers


def read_descriptions(path: str, column: str = TEXT_COLUMN) -> list[tuple[int, str]]:
  """The apps of ``meta.csv`` that have a description, in file order.

  Returns:
    ``(item, description)`` per app whose description is not empty or ``unknown``; ``item`` is the
    integer of the ``item`` column.

  Raises:
    FileNotFoundError: no such file.
    DataFormatError (a ValueError) naming the file and 1-based line: not UTF-8, empty, no
      ``item`` or ``column`` column in the header, a line with a different number of fields than
      the header, an interior blank line, an ``item`` that is not an integer or repeats.
  """
  path = os.fspath(path)
  lines = read_text(path).split('\n')
  lines = [ln[:-1] if ln.endswith('\r') else ln for ln in lines]
  while lines and not lines[-1].strip():
    lines.pop()
  header = lines[0].split('\t')
  for name in (ITEM_COLUMN, column):
    if name not in header:
      raise DataFormatError(path, 1, f'missing column {name!r} (header: {header})')
  item_col, text_col = header.index(ITEM_COLUMN), header.index(column)
  out, seen = [], {}
  for number, line in enumerate(lines[1:], start=2):
    if not line.strip():
      raise DataFormatError(path, number, 'blank line')
    cells = line.split('\t')
    if len(cells) != len(header):
      raise DataFormatError(path, number, f'{len(cells)} tab-separated fields, expected '
                            f'{len(header)} (the header\'s)')
    try:
      item = int(cells[item_col])
    except ValueError:
      raise DataFormatError(path, number, f'field {ITEM_COLUMN!r}: {cells[item_col]!r} is not '
                            'an integer') from None
    if item in seen:
      raise DataFormatError(path, number, f'field {ITEM_COLUMN!r}: item {item} already on line '
                            f'{seen[item]}')
    seen[item] = number
    text = cells[text_col]
    if text.strip() not in MISSING:
      out.append((item, text))
  return out


def split_apps(items: Sequence[int], texts: Sequence[str], valid_fraction: float,
               seed: int) -> dict[str, np.ndarray]:
  """Holds out about ``valid_fraction`` of the apps, by a seeded draw over distinct texts.

  Apps with identical descriptions (13 pairs in Frappe) fall on the same side, so no validation
  text is also a training text. The distinct texts, in first-appearance order, are put in the
  order ``np.random.default_rng([seed, 0x7E47]).permutation``; the first
  ``max(1, round(valid_fraction * distinct))`` are 'valid'.

  Returns:
    ``{'train': int64 [apps], 'valid': int64 [apps]}``: item ids, each in the input order.
  """
  if len(items) != len(texts):
    raise ValueError(f'split_apps: {len(items)} items but {len(texts)} texts')
  if not 0 < valid_fraction < 1:
    raise ValueError(f'split_apps: valid_fraction must be in (0, 1), got {valid_fraction!r}')
  distinct = list(dict.fromkeys(texts))
  n_valid = max(1, round(valid_fraction * len(distinct)))
  if n_valid >= len(distinct):
    raise ValueError(f'split_apps: {len(distinct)} distinct descriptions are too few to hold out '
                     f'valid_fraction={valid_fraction} and train on the rest')
  order = np.random.default_rng([seed, 0x7E47]).permutation(len(distinct))
  held = {distinct[i] for i in order[:n_valid]}
  is_valid = np.array([t in held for t in texts], bool)
  items = np.asarray(items, np.int64)
  return {'train': items[~is_valid], 'valid': items[is_valid]}


def train_tokenizer(texts: Sequence[str], vocab_size: int) -> tokenizers.Tokenizer:
  """A byte-level BPE with at most ``vocab_size`` tokens (256 bytes + merges) trained on ``texts``.

  Fewer tokens when the texts allow no more merges; deterministic in ``texts`` and
  ``vocab_size``.
  """
  if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)) or (
      vocab_size < 256):
    raise ValueError(f'train_tokenizer: vocab_size must be an integer >= 256 (the byte '
                     f'alphabet), got {vocab_size!r}')
  if not texts:
    raise ValueError('train_tokenizer: no texts to train on')
  lib = require_tokenizers()
  tok = lib.Tokenizer(lib.models.BPE())
  tok.pre_tokenizer = lib.pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = lib.decoders.ByteLevel()
  trainer = lib.trainers.BpeTrainer(vocab_size=int(vocab_size), show_progress=False,
                                    initial_alphabet=lib.pre_tokenizers.ByteLevel.alphabet(),
                                    special_tokens=[])
  tok.train_from_iterator(list(texts), trainer)
  return tok


def save_tokenizer(tok: tokenizers.Tokenizer, path: str) -> None:
  """Writes ``tok`` as JSON (``Tokenizer.to_str``), atomically."""
  tmp = f'{path}.tmp{os.getpid()}'
  with open(tmp, 'w', encoding='utf-8') as f:
    f.write(tok.to_str())
  os.replace(tmp, path)


def load_tokenizer(path: str) -> tokenizers.Tokenizer:
  """The tokenizer of :func:`save_tokenizer`; DataFormatError naming the file if unreadable."""
  text = read_text(path)
  lib = require_tokenizers()
  try:
    return lib.Tokenizer.from_str(text)
  except Exception as e:  # pylint: disable=broad-except  (the library raises a bare Exception)
    raise DataFormatError(path, None, f'not a tokenizer JSON: {e}') from None


def encode_texts(tok: tokenizers.Tokenizer, texts: Sequence[str]) -> list[np.ndarray]:
  """``int32 [tokens_i]`` per text."""
  return [np.asarray(e.ids, np.int32) for e in tok.encode_batch(list(texts))]


def token_stream(tok: tokenizers.Tokenizer, texts: Sequence[str], bos: int,
                 eos: int) -> np.ndarray:
  """``int32 [tokens]``: ``BOS ids(text_0) EOS BOS ids(text_1) EOS ...``."""
  parts = []
  for ids in encode_texts(tok, texts):
    parts += [np.array([bos], np.int32), ids, np.array([eos], np.int32)]
  return np.concatenate(parts) if parts else np.zeros(0, np.int32)
