"""MovieLens-100K as text-prompted CTR samples for OptiRAG-Rec (retrieval + early exit).

Built on :func:`jaxrec.data.movielens.read_atomic` and
:func:`~jaxrec.data.movielens.user_histories`.

Split, per user and in time order (ties in file order), counted from the end of the history::

  [ graph ............ | train (train_per_user) | valid (valid_per_user) | test (test_per_user) ]

* ``test`` / ``valid``: each user's last interactions (held out).
* ``train``: the CTR training samples, the interactions just before ``valid``.
* ``graph``: everything earlier. It is the retrieval corpus: the interaction graph of the GCN,
  the similar users' ratings shown as evidence, and the LM retriever's user histories. No CTR
  sample's own interaction is in it, so training prompts and test prompts are built alike (the
  GCN never saw the label it is asked about). A user with too few interactions gives up ``graph``
  rows first, then ``train`` rows, then ``valid``.

Labels: ``rating >= rating_threshold`` (default 4). Item text: ``"title (year), genre, genre"``.
A sample's history: the user's interactions before it in time (any part), most recent first.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

from jaxrec.data.errors import DataFormatError
from jaxrec.data.movielens import AtomicTable, read_atomic, user_histories
from jaxrec.data.movielens import GENRE_COLUMNS

PARTS = ('graph', 'train', 'valid', 'test')


@dataclasses.dataclass(frozen=True)
class SplitSizes:
  """Interactions per user at the end of the time line (see the module docstring)."""
  train_per_user: int = 10
  valid_per_user: int = 2
  test_per_user: int = 3

  def __post_init__(self):
    for f in dataclasses.fields(self):
      v = getattr(self, f.name)
      if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError(f'SplitSizes.{f.name} must be an int >= 0, got {v!r}')


@dataclasses.dataclass
class PromptData:
  """Interactions, split parts, item text and user time lines of MovieLens.

  Attributes:
    user_ids: raw user id per user index, ``str [U]``.
    item_ids: raw item id per item index, ``str [I]``.
    item_titles: title per item index (``list[str]``, ``I`` entries).
    item_texts: ``"title (year), genres"`` per item index.
    user: user index per interaction (file order), ``int32 [N]``.
    item: item index per interaction, ``int32 [N]``.
    rating: ``float32 [N]``.
    label: ``float32 [N]``, ``rating >= rating_threshold``.
    part: index into :data:`PARTS` per interaction, ``int8 [N]``.
    timelines: per user index, the interaction rows in time order (``int64`` arrays).
    position: each row's position in its user's time line, ``int64 [N]``.
  """
  user_ids: np.ndarray
  item_ids: np.ndarray
  item_titles: list[str]
  item_texts: list[str]
  user: np.ndarray
  item: np.ndarray
  rating: np.ndarray
  label: np.ndarray
  part: np.ndarray
  timelines: list[np.ndarray]
  position: np.ndarray

  @property
  def num_users(self) -> int:
    return len(self.user_ids)

  @property
  def num_items(self) -> int:
    return len(self.item_ids)

  def rows(self, part: str) -> np.ndarray:
    """Rows of ``part`` ordered by user index, then time (``int64``)."""
    if part not in PARTS:
      raise ValueError(f'unknown part {part!r}; valid: {PARTS}')
    code = PARTS.index(part)
    return np.concatenate([t[self.part[t] == code] for t in self.timelines])

  def history(self, row: int, length: int) -> np.ndarray:
    """The ``length`` interactions of ``row``'s user just before it, most recent first."""
    line = self.timelines[self.user[row]]
    pos = int(self.position[row])
    return line[max(0, pos - length):pos][::-1]

  def graph_ratings(self) -> np.ndarray:
    """``int8 [U, I]``: the ``graph`` part's ratings (0 = no interaction)."""
    rows = np.flatnonzero(self.part == PARTS.index('graph'))
    out = np.zeros((self.num_users, self.num_items), np.int8)
    out[self.user[rows], self.item[rows]] = self.rating[rows].astype(np.int8)
    return out

  def graph_edges(self, positive_only: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(user index, item index) of the ``graph`` part's (positive) interactions, ``int32 [E]``."""
    keep = self.part == PARTS.index('graph')
    if positive_only:
      keep &= self.label > 0
    return self.user[keep], self.item[keep]


def _item_texts(item: AtomicTable) -> tuple[np.ndarray, list[str], list[str]]:
  missing = [c for c in ('item_id', 'movie_title', 'release_year') if c not in item.columns]
  genre_col = next((c for c in GENRE_COLUMNS if c in item.columns), None)
  if missing or genre_col is None:
    raise DataFormatError(item.path, 1, f'item table needs item_id, movie_title, release_year and '
                          f'one of {GENRE_COLUMNS}; header: {list(item.types)}')
  titles, texts = [], []
  for title, year, genres in zip(item['movie_title'].tolist(), item['release_year'].tolist(),
                                 item[genre_col].tolist()):
    title = ' '.join(title) if isinstance(title, tuple) else str(title)
    genres = genres if isinstance(genres, tuple) else (str(genres),)
    year = f' ({year})' if year else ''
    titles.append(title)
    texts.append(f'{title}{year}, {", ".join(genres)}')
  ids = item['item_id']
  if len(set(ids.tolist())) != len(ids):
    dup = next(i for i, x in enumerate(ids.tolist()) if x in ids[:i])
    raise DataFormatError(item.path, dup + 2, f'duplicate item_id {ids[dup]!r}')
  return ids, titles, texts


def _assign_parts(timelines: list[np.ndarray], n: int, sizes: SplitSizes) -> np.ndarray:
  part = np.zeros(n, np.int8)
  for line in timelines:
    left = len(line)
    for code, k in ((3, sizes.test_per_user), (2, sizes.valid_per_user),
                    (1, sizes.train_per_user)):
      take = min(k, left)
      part[line[left - take:left]] = code
      left -= take
  return part


def load_prompt_data(data_dir: str, sizes: SplitSizes = SplitSizes(),
                     rating_threshold: float = 4.0, dataset: str = 'ml-100k') -> PromptData:
  """Reads ``{dataset}.inter`` and ``.item`` from ``data_dir`` into a :class:`PromptData`.

  Raises:
    FileNotFoundError: a file is missing.
    DataFormatError: a missing column, a duplicate item id, an interaction whose item is not in
      the item table (naming the ``.inter`` line).
  """
  tables = read_atomic(data_dir, dataset)
  inter = tables.inter
  if tables.item is None:
    raise FileNotFoundError(f'{data_dir}: {dataset}.item not found (item titles are needed)')
  need = [c for c in ('user_id', 'item_id', 'rating', 'timestamp') if c not in inter.columns]
  if need:
    raise DataFormatError(inter.path, 1, f'missing columns {need} (header: {list(inter.types)})')
  item_ids, titles, texts = _item_texts(tables.item)
  item_index = {x: i for i, x in enumerate(item_ids.tolist())}
  items = np.empty(len(inter), np.int32)
  for r, x in enumerate(inter['item_id'].tolist()):
    if x not in item_index:
      raise DataFormatError(inter.path, r + 2, f'item_id {x!r} is not in the item table')
    items[r] = item_index[x]
  user_ids, users = np.unique(inter['user_id'], return_inverse=True)
  by_user = user_histories(inter)
  timelines = [by_user[str(u)] for u in user_ids.tolist()]
  position = np.empty(len(inter), np.int64)
  for line in timelines:
    position[line] = np.arange(len(line))
  rating = inter['rating'].astype(np.float32)
  return PromptData(
      user_ids=user_ids, item_ids=item_ids, item_titles=titles, item_texts=texts,
      user=users.astype(np.int32), item=items, rating=rating,
      label=(rating >= rating_threshold).astype(np.float32),
      part=_assign_parts(timelines, len(inter), sizes), timelines=timelines, position=position)


def _stars(r: float) -> str:
  return str(int(r)) if float(r).is_integer() else f'{r:g}'


def build_prompt(target_text: str, history: Sequence[tuple[str, float]],
                 evidence: Optional[Sequence[float]] = None,
                 evidence_title: Optional[str] = None, threshold: float = 4.0) -> str:
  """The prompt text of one sample.

  Args:
    target_text: the target item's text.
    history: (title, rating) of the user's recent interactions, most recent first.
    evidence: ratings by the retrieved similar users (most similar first); ``None`` leaves the
      evidence sentence out (the prompt without retrieval); empty means none was found.
    evidence_title: set when the evidence rates a neighbour of the target instead of the target.
    threshold: the "liked" cut used to summarise the evidence.

  Example::

    build_prompt('Toy Story (1995), Animation', [('GoldenEye', 3)], [5, 4, 2])
    # 'movie: Toy Story (1995), Animation. similar users rated it 5 4 2, 2 of 3 liked.
    #  will the user like it? user rated: GoldenEye 3.'

  The history comes last, so truncating the tokens drops the oldest history items first.
  """
  parts = [f'movie: {target_text}.']
  if evidence is not None:
    what = 'it' if evidence_title is None else f'the similar movie {evidence_title}'
    if len(evidence):
      liked = sum(float(r) >= threshold for r in evidence)
      parts.append(f'similar users rated {what} {" ".join(_stars(r) for r in evidence)}, '
                   f'{liked} of {len(evidence)} liked.')
    else:
      parts.append('no similar user rated it.')
  parts.append('will the user like it?')
  if history:
    parts.append('user rated: ' + '; '.join(f'{t} {_stars(r)}' for t, r in history) + '.')
  return ' '.join(parts)


def sample_history(data: PromptData, row: int, length: int) -> list[tuple[str, float]]:
  """(title, rating) of the ``length`` interactions before ``row``, most recent first."""
  return [(data.item_titles[data.item[r]], float(data.rating[r]))
          for r in data.history(row, length)]


def user_history_text(data: PromptData, user: int, part: str = 'graph',
                      length: int = 20) -> str:
  """The LM retriever's text of a user: the last ``length`` ``part`` interactions, most recent
  first, as ``"title rating; ..."``."""
  code = PARTS.index(part)
  line = data.timelines[user]
  line = line[data.part[line] == code][-length:][::-1]
  return '; '.join(f'{data.item_titles[data.item[r]]} {_stars(data.rating[r])}' for r in line)


def build_prompts(data: PromptData, rows: Sequence[int], history_length: int,
                  evidence: Optional[Sequence[Sequence[float]]] = None,
                  evidence_items: Optional[Sequence[int]] = None,
                  threshold: float = 4.0) -> list[str]:
  """Prompts of interaction ``rows``; ``evidence[q]`` (ratings) and ``evidence_items[q]`` (the
  rated item, the target or a neighbour) come from a retriever, ``None`` for no retrieval."""
  rows = np.asarray(rows)
  if evidence is not None and (len(evidence) != len(rows) or evidence_items is None
                               or len(evidence_items) != len(rows)):
    raise ValueError(f'{len(rows)} rows but evidence for '
                     f'{len(evidence)} / items for '
                     f'{None if evidence_items is None else len(evidence_items)}')
  out = []
  for q, r in enumerate(rows.tolist()):
    target = int(data.item[r])
    ev = ev_title = None
    if evidence is not None:
      ev = evidence[q]
      it = int(evidence_items[q])
      if it >= 0 and it != target:
        ev_title = data.item_titles[it]
    out.append(build_prompt(data.item_texts[target], sample_history(data, r, history_length),
                            ev, ev_title, threshold))
  return out
