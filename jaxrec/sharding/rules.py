"""The one table of logical-axis rules: which mesh axes each logical axis name is sharded over.

Models name every parameter dimension (``jaxrec.layers`` lists the names); this table maps the
names to the mesh axes of ``jaxrec.sharding.mesh``. Rules are tried in order, with flax's
semantics (``nn.logical_to_mesh_axes``): a rule ``(name, axes)`` gives ``axes`` to the dimension
called ``name`` if that dimension has none yet and no other dimension of the same array already
uses one of ``axes``. So an embedding table ``('vocab', 'embed')`` is sharded by rows over
``fsdp`` (``'embed'`` finds ``fsdp`` taken and stays whole), a transformer kernel ``('embed',
'mlp')`` is ``fsdp`` x ``tensor``, and an activation ``('batch', 'length', 'embed')`` is split by
rows over every data-parallel axis (``host``, ``data``, ``fsdp`` and ``expert``: tokens are split
over the expert devices too, as in GShard).

``'fsdp'`` here stands for "the axis parameters are fully sharded over": the FSDP strategy
(``jaxrec.sharding.fsdp``) rewrites it per array role (e.g. NO_SHARD drops it from parameters,
FULL_SHARD on a (host, local) mesh widens it to ``('host', 'fsdp')``). Axes a mesh does not have
are dropped, so one table serves every mesh.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional, Sequence, Union

import flax.linen as nn
import jax
from jax.sharding import Mesh

MeshAxes = Optional[Union[str, tuple[str, ...]]]
Rules = tuple[tuple[str, MeshAxes], ...]

BATCH = 'batch'
FSDP = 'fsdp'
TENSOR = 'tensor'
EXPERT = 'expert'
# The mesh axes batch rows (and a MoE layer's tokens) are split over, in row-major order: the
# expert axis last, so each expert device holds a contiguous block of tokens
# (jaxrec.sharding.expert_parallel).
BATCH_MESH_AXES = ('host', 'data', FSDP, EXPERT)

# Priority order matters (see the module docstring).
LOGICAL_AXIS_RULES: Rules = (
    # Activations: rows over every data-parallel axis.
    (BATCH, BATCH_MESH_AXES),
    ('length', None),
    # FSDP: the first of these a parameter has is split over the fsdp axis.
    ('vocab', FSDP),  # embedding tables by rows
    ('mlp_in', FSDP),  # MLP kernels by input rows
    ('cross_in', FSDP),  # cross kernels, low-rank V and the expert gate by input rows
    ('embed', FSDP),  # transformer kernels and LayerNorms by model width
    ('cross', FSDP),  # cross biases, low-rank U
    # Tensor parallelism (Megatron style: MLP hidden and attention heads).
    ('mlp', TENSOR),
    ('heads', TENSOR),
    ('cross', TENSOR),
    # Expert parallelism: MoE experts over the expert axis (jaxrec.sharding.expert_parallel).
    (EXPERT, EXPERT),
    # Never sharded: small or structural dimensions.
    ('mlp_out', None),
    ('kv', None),
    ('modality', None),  # per-modality weight copies (jaxrec.layers.decoder, MoT)
    ('rank', None),
    ('rank_in', None),
    ('layers', None),
    # Wukong (jaxrec.layers.wukong) and DHEN (jaxrec.layers.dhen): embedding counts, conv
    # filters and ensemble weights are small.
    ('fields_in', None),
    ('fields', None),
    ('conv_height', None),
    ('conv_width', None),
    ('conv_in', None),
    ('conv', None),
    ('ensemble', None),
)


def rule_names(rules: Rules = LOGICAL_AXIS_RULES) -> frozenset[str]:
  return frozenset(name for name, _ in rules)


def check_names_covered(logical_names: Iterable[Optional[str]], where: str,
                        rules: Rules = LOGICAL_AXIS_RULES) -> None:
  """Raises ValueError naming ``where`` if a logical axis name has no rule in ``rules``."""
  known = rule_names(rules)
  missing = sorted({n for n in logical_names if n is not None and n not in known})
  if missing:
    raise ValueError(f'{where}: logical axis name(s) {missing} have no rule in the sharding '
                     f'rules table (jaxrec.sharding.rules.LOGICAL_AXIS_RULES); known names: '
                     f'{sorted(known)}')


def _as_tuple(axes: MeshAxes) -> tuple[str, ...]:
  if axes is None:
    return ()
  return (axes,) if isinstance(axes, str) else tuple(axes)


def mesh_rules(mesh: Mesh, rules: Rules = LOGICAL_AXIS_RULES) -> Rules:
  """``rules`` with the mesh axes ``mesh`` lacks removed (a rule left with none maps to None)."""
  out = []
  for name, axes in rules:
    kept = tuple(a for a in _as_tuple(axes) if a in mesh.axis_names)
    out.append((name, kept if len(kept) > 1 else (kept[0] if kept else None)))
  return tuple(out)


def logical_to_mesh_axes(names: Sequence[Optional[str]], mesh: Mesh,
                         rules: Rules = LOGICAL_AXIS_RULES) -> tuple[tuple[str, ...], ...]:
  """The mesh axes of each dimension of an array with logical axis ``names`` (flax semantics).

  Returns one tuple of mesh axis names per dimension (empty: not sharded).
  """
  spec = nn.logical_to_mesh_axes(tuple(names), mesh_rules(mesh, rules))
  return tuple(_as_tuple(entry) for entry in tuple(spec) + (None,) * (len(names) - len(spec)))


def embedding_mask(boxed_params: Any) -> Any:
  """True for parameters whose logical axes include 'vocab' (embedding tables).

  ``boxed_params``: parameters still boxed (``nn.LogicallyPartitioned``, or their
  ``jax.eval_shape``); the result has their tree structure, one bool per parameter.
  """
  specs = nn.get_partition_spec(boxed_params)
  return jax.tree.map(lambda s: s is not None and 'vocab' in tuple(s), specs,
                      is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec) or x is None)
