"""MovieLens prompts: the time-ordered split, histories, item text, prompt text, errors."""

import numpy as np
import pytest

from jaxrec.data.errors import DataFormatError
from jaxrec.data import ml_prompts as mp

INTER = ('user_id:token\titem_id:token\trating:float\ttimestamp:float\n'
         + ''.join(f'{u}\t{i}\t{r}\t{t}\n' for u, i, r, t in [
             ('7', '1', 5, 30), ('7', '2', 2, 10), ('7', '3', 4, 20), ('7', '1', 3, 40),
             ('7', '2', 4, 50), ('9', '3', 1, 5), ('9', '1', 4, 6), ('9', '2', 5, 6)]))
ITEM = ('item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n'
        '1\tToy Story\t1995\tAnimation Comedy\n2\tGoldenEye\t1995\tAction\n'
        '3\tShawshank Redemption, The\t1994\tDrama\n')


def _write(tmp_path, inter=INTER, item=ITEM):
  (tmp_path / 'ml-100k.inter').write_text(inter)
  (tmp_path / 'ml-100k.item').write_text(item)
  return str(tmp_path)


def test_split_history_and_text_on_a_tiny_file(tmp_path):
  d = mp.load_prompt_data(_write(tmp_path), mp.SplitSizes(1, 1, 1))
  assert d.item_texts == ['Toy Story (1995), Animation, Comedy', 'GoldenEye (1995), Action',
                          'Shawshank Redemption, The (1994), Drama']
  assert d.user_ids.tolist() == ['7', '9']
  # user 7 in time order: rows 1 (t10), 2 (t20), 0 (t30), 3 (t40), 4 (t50)
  np.testing.assert_array_equal(d.timelines[0], [1, 2, 0, 3, 4])
  assert [mp.PARTS[p] for p in d.part[[1, 2, 0, 3, 4]]] == ['graph', 'graph', 'train', 'valid',
                                                             'test']
  # user 9: rows 5 (t5), 6 (t6), 7 (t6, later in the file) -> train, valid, test; no graph row
  assert [mp.PARTS[p] for p in d.part[[5, 6, 7]]] == ['train', 'valid', 'test']
  np.testing.assert_array_equal(d.rows('test'), [4, 7])
  np.testing.assert_array_equal(d.history(4, 3), [3, 0, 2])  # most recent first
  assert mp.sample_history(d, 4, 2) == [('Toy Story', 3.0), ('Toy Story', 5.0)]
  np.testing.assert_array_equal(d.label, [1, 0, 1, 0, 1, 0, 1, 1])
  r = d.graph_ratings()
  assert r.sum() == 2 + 4 and r[0, 1] == 2 and r[0, 2] == 4
  users, items = d.graph_edges()
  assert users.tolist() == [0] and items.tolist() == [2]  # the only positive graph interaction
  assert mp.user_history_text(d, 0) == 'Shawshank Redemption, The 4; GoldenEye 2'


def test_prompt_text():
  p = mp.build_prompt('Toy Story (1995), Animation', [('GoldenEye', 3.0), ('Heat', 5.0)],
                      [5.0, 4.0, 2.0])
  assert p == ('movie: Toy Story (1995), Animation. similar users rated it 5 4 2, 2 of 3 liked. '
               'will the user like it? user rated: GoldenEye 3; Heat 5.')
  assert mp.build_prompt('X', [], None) == 'movie: X. will the user like it?'
  assert mp.build_prompt('X', [], []) == ('movie: X. no similar user rated it. will the user '
                                          'like it?')
  assert 'similar users rated the similar movie Heat 4, 1 of 1 liked.' in mp.build_prompt(
      'X', [], [4.0], 'Heat')


def test_build_prompts_uses_the_evidence_item(tmp_path):
  d = mp.load_prompt_data(_write(tmp_path), mp.SplitSizes(1, 1, 1))
  prompts = mp.build_prompts(d, [4, 7], 1, [[4.0], []], [1, -1])
  assert prompts[0] == ('movie: GoldenEye (1995), Action. similar users rated it 4, 1 of 1 liked. '
                        'will the user like it? user rated: Toy Story 3.')
  assert 'no similar user rated it' in prompts[1]
  other = mp.build_prompts(d, [4], 0, [[5.0]], [2])
  assert 'rated the similar movie Shawshank Redemption, The 5' in other[0]
  with pytest.raises(ValueError, match='2 rows but evidence for 1'):
    mp.build_prompts(d, [4, 7], 1, [[4.0]], [1])


def test_errors_name_file_and_line(tmp_path):
  bad = INTER + '9\t4\t3\t7\n'
  with pytest.raises(DataFormatError, match=r"ml-100k.inter:10: item_id '4' is not in the item"):
    mp.load_prompt_data(_write(tmp_path, inter=bad))
  with pytest.raises(DataFormatError, match=r'ml-100k.item:3: duplicate item_id'):
    mp.load_prompt_data(_write(tmp_path, item=ITEM.replace('2\tGoldenEye', '1\tGoldenEye')))
  with pytest.raises(ValueError, match='SplitSizes.valid_per_user must be an int >= 0'):
    mp.SplitSizes(valid_per_user=-1)
  d = mp.load_prompt_data(_write(tmp_path))
  with pytest.raises(ValueError, match="unknown part 'dev'"):
    d.rows('dev')


def test_movielens_100k_split(shared_data):
  d = mp.load_prompt_data(str(shared_data / 'movielens-100k'))
  assert (d.num_users, d.num_items, len(d.rating)) == (943, 1682, 100000)
  counts = {p: len(d.rows(p)) for p in mp.PARTS}
  assert counts == {'graph': 100000 - 943 * 15, 'train': 9430, 'valid': 1886, 'test': 2829}
  np.testing.assert_array_equal(d.label, d.rating >= 4)
  ts = np.loadtxt(shared_data / 'movielens-100k' / 'ml-100k.inter', skiprows=1, usecols=3)
  for u in (0, 100, 942):  # each user's parts follow each other in time
    line = d.timelines[u]
    assert np.all(np.diff(ts[line]) >= 0)
    assert np.all(np.diff(d.part[line]) >= 0)
    assert d.part[line[-1]] == mp.PARTS.index('test')
  assert d.item_texts[0] == "Toy Story (1995), Animation, Children's, Comedy"
