"""libfm files of one-hot fields: ``label idx:1 idx:1 ...`` (the NFM / AFM Frappe layout).

Each line holds a label (1 positive; -1 or 0 negative) and one ``global_index:1`` token per field,
in field order. Field ``j`` owns the global indices ``[offset_j, offset_j + size_j)`` with
``offset_j = size_0 + ... + size_{j-1}``; the reader stores the local id ``global - offset_j``.
A wrong token count, a token outside its field's range, a value other than 1 or a bad label is
a :class:`~jaxrec.data.errors.DataFormatError` naming the file, line and field.

Parsing is vectorised (numpy's C text parser) for files in the canonical layout; any line it
cannot vouch for sends the file through an exact line-by-line parser, which also words the errors.
"""

from __future__ import annotations

import io
import re
from typing import Sequence

import numpy as np

from jaxrec.data.dataset import ArrayDataset
from jaxrec.data.errors import DataFormatError, data_lines, read_text
from jaxrec.data.schema import one_hot_schema

# Signs of a line the fast parser cannot vouch for: a label holding ':', a token with two ':'
# (each a cheap search; an alternation of them defeats the regex engine's literal scan).
_LABEL_WITH_COLON = re.compile(r'^[ \t]*[^\s:]*:', re.MULTILINE)
_TWO_COLONS = re.compile(r':[^\s:]*:')
_EMPTY_PART = (' :', ': ', '\t:', ':\t', '\n:', ':\n')
_LABELS = {1: 1.0, -1: 0.0, 0: 0.0}


class _NotCanonical(Exception):
  pass


def read_libfm(path: str, field_names: Sequence[str], field_sizes: Sequence[int]) -> ArrayDataset:
  """Reads a libfm file of one-hot fields into an ArrayDataset.

  Args:
    path: the file.
    field_names: the fields, in the order their tokens appear on each line.
    field_sizes: the number of features of each field.

  Returns:
    ``sparse`` ``int32 [rows, len(field_names)]`` of local ids, ``label`` in {0, 1}; the schema
    has one one-hot field per name with ``vocab_size`` = its size.
  """
  field_names, field_sizes = list(field_names), [int(s) for s in field_sizes]
  if len(field_names) != len(field_sizes):
    raise ValueError(f'{len(field_names)} field names but {len(field_sizes)} field sizes')
  offsets = np.concatenate([[0], np.cumsum(field_sizes)[:-1]]).astype(np.int64)
  sizes = np.asarray(field_sizes, np.int64)
  text = read_text(path)
  lines = data_lines(path, text)
  try:
    fast = _parse_fast(lines, len(field_names))
  except _NotCanonical:
    fast = None  # parsed below, outside the handler, so errors do not chain _NotCanonical
  if fast is None:
    label, index = _parse_slow(path, lines, field_names, offsets, sizes)
  else:
    label, index = fast
    _check_fast(path, lines, label, index, field_names, offsets, sizes)
  schema = one_hot_schema(field_names, field_sizes)
  labels = np.where(label == 1, 1.0, 0.0).astype(np.float32)
  return ArrayDataset(schema, sparse=(index[:, 0::2] - offsets).astype(np.int32), label=labels,
                      name=str(path))


def _parse_fast(lines: list[str], num_fields: int) -> tuple[np.ndarray, np.ndarray]:
  """(labels ``int64 [rows]``, index/value pairs ``int64 [rows, 2 * fields]``) or _NotCanonical."""
  body = '\n'.join(lines)
  # Each row parses to 1 + 2F numbers; with no empty part, no two-colon token and a colon-free
  # label, a line has at most F colons, so a total of rows * F colons means F on every line:
  # exactly a label and F index:value tokens.
  if (not body.isascii() or body[0] == ':' or body[-1] == ':'
      or any(s in body for s in _EMPTY_PART) or body.count(':') != len(lines) * num_fields
      or _TWO_COLONS.search(body) or _LABEL_WITH_COLON.search(body)):
    raise _NotCanonical()
  try:
    grid = np.loadtxt(io.StringIO(body.replace(':', ' ')), dtype=np.int64, comments=None, ndmin=2)
  except ValueError:
    raise _NotCanonical() from None
  if grid.shape != (len(lines), 1 + 2 * num_fields):
    raise _NotCanonical()
  return grid[:, 0], grid[:, 1:]


def _check_fast(path, lines, label, pairs, names, offsets, sizes) -> None:
  """Finds the first row breaking a rule and lets the line parser word the error."""
  index, value = pairs[:, 0::2], pairs[:, 1::2]
  bad = ~np.isin(label, list(_LABELS))
  bad |= (value != 1).any(axis=1)
  bad |= ((index < offsets) | (index >= offsets + sizes)).any(axis=1)
  if bad.any():
    i = int(np.argmax(bad))
    _parse_line(path, i + 1, lines[i], names, offsets, sizes)
    raise DataFormatError(path, i + 1, 'malformed line')  # unreachable: the line parser raised


def _parse_slow(path, lines, names, offsets, sizes) -> tuple[np.ndarray, np.ndarray]:
  labels = np.zeros(len(lines), np.int64)
  pairs = np.ones((len(lines), 2 * len(names)), np.int64)
  for i, line in enumerate(lines):
    labels[i], pairs[i, 0::2] = _parse_line(path, i + 1, line, names, offsets, sizes)
  return labels, pairs


def _parse_line(path: str, lineno: int, line: str, names, offsets, sizes) -> tuple[int, list[int]]:
  """(label as 1 / 0, global index per field) of one line; DataFormatError on any problem."""
  tokens = line.split()
  if len(tokens) != 1 + len(names):
    raise DataFormatError(path, lineno, f'expected {1 + len(names)} tokens (a label and one '
                          f'index:1 per field {list(names)}), got {len(tokens)}')
  try:
    label = float(tokens[0])
  except ValueError:
    label = None
  if label not in (1.0, -1.0, 0.0):
    raise DataFormatError(path, lineno, f'label {tokens[0]!r} is not 1, -1 or 0')
  out = []
  for j, (tok, name) in enumerate(zip(tokens[1:], names)):
    parts = tok.split(':')
    if len(parts) != 2:
      raise DataFormatError(path, lineno, f'field {name!r}: token {tok!r} is not index:value')
    try:
      idx = int(parts[0])
      val = float(parts[1])
    except ValueError:
      raise DataFormatError(path, lineno, f'field {name!r}: token {tok!r} is not '
                            'integer_index:number') from None
    lo, hi = int(offsets[j]), int(offsets[j] + sizes[j])
    if not lo <= idx < hi:
      raise DataFormatError(path, lineno, f'field {name!r}: index {idx} (token {tok!r}) is outside '
                            f'the field\'s range [{lo}, {hi})')
    if val != 1.0:
      raise DataFormatError(path, lineno, f'field {name!r}: value {parts[1]!r} (token {tok!r}) is '
                            'not 1 (only one-hot fields are supported)')
    out.append(idx)
  return (1 if label == 1.0 else 0), out
