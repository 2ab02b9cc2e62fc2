"""Errors raised by the dataset file readers, and the file checks they share.

Every reader reports bad input as a :class:`DataFormatError` naming the file and the 1-based line
(``"frappe.train.libfm:17: field 'weekday': ..."``); a missing file is a ``FileNotFoundError``
naming the path (and, for a data directory, the file names expected there). Both are
:class:`jaxrec.errors.UserError` s, which the scripts print without a traceback.
"""

from __future__ import annotations

import os
from typing import Iterable, Optional

from jaxrec.errors import UserError


class DataFormatError(UserError, ValueError):
  """Malformed dataset file content.

  Attributes:
    path: the file.
    line: 1-based line number, or None when the problem is not tied to one line (an empty file).
    message: what is wrong (names the field where one is involved).
  """

  def __init__(self, path: str, line: Optional[int], message: str):
    self.path = str(path)
    self.line = line
    self.message = message
    where = self.path if line is None else f'{self.path}:{line}'
    super().__init__(f'{where}: {message}')

  def __reduce__(self):
    return (type(self), (self.path, self.line, self.message))


class DataFileNotFoundError(UserError, FileNotFoundError):
  """A dataset file or directory that is not there (the message names it)."""


def require_file(path: str) -> str:
  """Returns ``path`` if it is a file; raises FileNotFoundError naming it otherwise."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise DataFileNotFoundError(f'dataset file {path!r} not found')
  return path


def require_dir_files(data_dir: str, names: Iterable[str], dataset: str) -> list[str]:
  """The paths of ``names`` in ``data_dir``; FileNotFoundError listing them if one is missing."""
  if data_dir is None:
    raise DataFileNotFoundError(f'{dataset}: data_dir is required (the folder holding '
                                f'{sorted(names)})')
  names = list(names)
  paths = [os.path.join(data_dir, n) for n in names]
  missing = [n for n, p in zip(names, paths) if not os.path.isfile(p)]
  if missing:
    raise DataFileNotFoundError(f'{dataset}: {missing} not found in data_dir '
                                f'{os.fspath(data_dir)!r} (expected files: {names})')
  return paths


def read_text(path: str) -> str:
  """The text of ``path`` (UTF-8); FileNotFoundError if absent, DataFormatError if empty or not
  UTF-8."""
  require_file(path)
  with open(path, 'rb') as f:
    raw = f.read()
  try:
    text = raw.decode('utf-8')
  except UnicodeDecodeError as e:
    line = raw[:e.start].count(b'\n') + 1
    raise DataFormatError(path, line, f'not valid UTF-8 ({e.reason})') from None
  if not text.strip():
    raise DataFormatError(path, None, 'file is empty')
  return text


def data_lines(path: str, text: str) -> list[str]:
  """The lines of ``text``; trailing blank lines are dropped, an interior blank line is an error."""
  lines = text.splitlines()
  while lines and not lines[-1].strip():
    lines.pop()
  for i, line in enumerate(lines):
    if not line.strip():
      raise DataFormatError(path, i + 1, 'blank line')
  return lines
