"""The package's folders import one way, bottom to top (the house style's layer order).

Every module under ``jaxrec/`` is parsed with ``ast`` (nothing is imported), each ``import`` /
``from ... import`` naming ``jaxrec.<folder>`` becomes an edge between folders (imports inside
functions count too), and the graph must

* follow the ranks below: a folder imports only folders of its rank or lower;
* respect the extra rules (``FORBIDDEN``: sharding and planner decide where arrays live and never
  import train or data);
* have no cycle between folders (two folders of one rank may not import each other).

A failure names the importing file, its line and the imported module.
"""

from __future__ import annotations

import ast
import functools
import pathlib

PACKAGE = 'jaxrec'
PACKAGE_DIR = pathlib.Path(__file__).resolve().parent.parent / PACKAGE

# Bottom to top. ``errors`` is the top-level ``jaxrec/errors.py`` (shared exception types) and
# ``__init__`` the package root's ``jaxrec/__init__.py``, which must stay free of folder imports
# (importing any folder runs it).
RANKS = {
    '__init__': 0,
    'errors': 0,
    'data': 1,
    'embeddings': 1,
    'layers': 2,
    'models': 3,
    'sharding': 4,
    'planner': 4,
    'retrieval': 5,
    'serving': 5,
    'train': 6,
    'compat': 7,
}

# (importer, imported) pairs the ranks allow but the house rules do not.
FORBIDDEN = {
    ('sharding', 'data'): 'sharding decides where arrays live; data pipelines belong to train',
    ('planner', 'data'): 'the planner decides where arrays live; data pipelines belong to train',
}

# Known exceptions: (importing file relative to jaxrec/, imported folder) -> why it is allowed.
# Keep this empty unless a move would be unreasonable; every entry needs its reason.
ALLOWED = {}


def _node(path: pathlib.Path) -> str:
  """The folder a module belongs to (a top-level module is its own node)."""
  parts = path.relative_to(PACKAGE_DIR).parts
  return parts[0] if len(parts) > 1 else parts[0][:-len('.py')]


def _imported_modules(tree: ast.AST, package: list[str]):
  """(line, absolute dotted module) for every import in ``tree``; ``package`` is the module's
  package as a list of names (for relative imports). ``from a.b import c`` gives ``a.b.c`` (a
  submodule or a name in ``a.b``: either way the folder is the same)."""
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        yield node.lineno, alias.name
    elif isinstance(node, ast.ImportFrom):
      if node.level:
        base = package[:len(package) - node.level + 1]
        module = '.'.join(base + ([node.module] if node.module else []))
      else:
        module = node.module
      for alias in node.names:
        yield node.lineno, f'{module}.{alias.name}'


@functools.lru_cache(maxsize=None)
def import_edges() -> tuple[tuple[str, str, str, int, str], ...]:
  """(importer folder, imported folder, importing file, line, imported module), across folders."""
  edges = []
  for path in sorted(PACKAGE_DIR.rglob('*.py')):
    rel = path.relative_to(PACKAGE_DIR)
    package = [PACKAGE] + list(rel.parts[:-1])
    src = _node(path)
    for line, module in _imported_modules(ast.parse(path.read_text(), str(path)), package):
      parts = module.split('.')
      if parts[0] != PACKAGE or len(parts) < 2:
        continue
      dst = parts[1]
      if dst != src:
        edges.append((src, dst, f'{PACKAGE}/{rel.as_posix()}', line, module))
  return tuple(edges)


def folder_graph() -> dict[str, set[str]]:
  graph: dict[str, set[str]] = {}
  for src, dst, *_ in import_edges():
    graph.setdefault(src, set()).add(dst)
  return graph


def _find_cycle(graph: dict[str, set[str]]):
  """One cycle as a list of folders (first == last), or None."""
  state: dict[str, int] = {}  # 1 on the stack, 2 done
  stack: list[str] = []

  def visit(n):
    state[n] = 1
    stack.append(n)
    for m in sorted(graph.get(n, ())):
      if state.get(m) == 1:
        return stack[stack.index(m):] + [m]
      if m not in state:
        found = visit(m)
        if found:
          return found
    stack.pop()
    state[n] = 2
    return None

  for n in sorted(graph):
    if n not in state:
      found = visit(n)
      if found:
        return found
  return None


def _where(src: str, dst: str) -> list[str]:
  return [f'{f}:{line} imports {module}' for s, d, f, line, module in import_edges()
          if (s, d) == (src, dst)]


def test_every_folder_has_a_rank():
  folders = {p.name for p in PACKAGE_DIR.iterdir() if (p / '__init__.py').exists()}
  modules = {p.stem for p in PACKAGE_DIR.glob('*.py')}
  unranked = sorted((folders | modules) - set(RANKS))
  assert not unranked, (f'{unranked} under {PACKAGE}/ have no place in the import order; add '
                        'them to RANKS in tests/test_imports.py (and to the house style)')


def violations(edges) -> list[str]:
  """One message per edge against the ranks or ``FORBIDDEN`` (``ALLOWED`` entries skipped)."""
  bad = []
  for src, dst, path, line, module in edges:
    if (path[len(PACKAGE) + 1:], dst) in ALLOWED:
      continue
    rule = FORBIDDEN.get((src, dst))
    if rule:
      bad.append(f'{path}:{line} imports {module}: {src} may not import {dst} ({rule})')
    elif dst in RANKS and src in RANKS and RANKS[dst] > RANKS[src]:
      bad.append(f'{path}:{line} imports {module}: {src} (rank {RANKS[src]}) may not import '
                 f'{dst} (rank {RANKS[dst]}, higher)')
  return bad


def test_imports_run_bottom_to_top():
  bad = violations(import_edges())
  assert not bad, 'imports against the layer order:\n  ' + '\n  '.join(bad)


def test_the_checker_sees_a_wrong_way_import():
  edges = [('sharding', 'train', 'jaxrec/sharding/fsdp.py', 3, 'jaxrec.train.state'),
           ('sharding', 'data', 'jaxrec/sharding/x.py', 4, 'jaxrec.data.dataset.Batch'),
           ('embeddings', 'layers', 'jaxrec/embeddings/x.py', 5, 'jaxrec.layers.embedding'),
           ('train', 'sharding', 'jaxrec/train/loop.py', 6, 'jaxrec.sharding.mesh'),
           ('embeddings', 'data', 'jaxrec/embeddings/x.py', 7, 'jaxrec.data.schema')]
  bad = violations(edges)
  assert len(bad) == 3
  assert bad[0].startswith('jaxrec/sharding/fsdp.py:3 imports jaxrec.train.state: sharding')
  assert 'sharding may not import data' in bad[1]
  assert bad[2].startswith('jaxrec/embeddings/x.py:5 imports jaxrec.layers.embedding')


def test_no_cycle_between_folders():
  graph = folder_graph()
  cycle = _find_cycle(graph)
  if cycle:
    lines = [f'import cycle between folders: {" -> ".join(cycle)}']
    for src, dst in zip(cycle, cycle[1:]):
      lines += [f'  {src} -> {dst}:'] + [f'    {w}' for w in _where(src, dst)]
    raise AssertionError('\n'.join(lines))


def test_the_checker_sees_a_cycle():
  assert _find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']
  assert _find_cycle({'a': {'b'}, 'b': set()}) is None


def test_relative_imports_resolve():
  tree = ast.parse('from . import mesh\nfrom ..data import schema\nfrom jaxrec import train\n')
  found = [m for _, m in _imported_modules(tree, [PACKAGE, 'sharding'])]
  assert found == ['jaxrec.sharding.mesh', 'jaxrec.data.schema', 'jaxrec.train']
