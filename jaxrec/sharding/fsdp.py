"""FSDP strategies (named as PyTorch's), mixed precision, and the sharding plan of a train state.

A strategy decides which mesh axes the rules table's ``'fsdp'`` entry expands to, per role:

==============  ============================  ==============================  ===================
strategy        parameters (storage)          gradients and optimizer state   collectives / step
==============  ============================  ==============================  ===================
FULL_SHARD      sharded over (host,) fsdp     sharded over (host,) fsdp       all-gather params,
                                                                              reduce-scatter grads
SHARD_GRAD_OP   replicated                    sharded over (host,) fsdp       reduce-scatter grads,
                                                                              all-gather updated
                                                                              params
NO_SHARD        replicated                    replicated                      all-reduce grads
HYBRID_SHARD    sharded over fsdp (within a   sharded over fsdp, replicated   FULL_SHARD's inside
                host), replicated over host   over host                       a host + all-reduce
                                                                              across hosts
==============  ============================  ==============================  ===================

(``tensor`` rules apply under every strategy; the batch is split over ``host``, ``data``, ``fsdp``
and ``expert``.) HYBRID_SHARD needs the hierarchical mesh (``config.sharding.hosts``).

Expert parallelism (a mesh ``expert`` axis of more than one device, GSPMD implementation only):
expert kernels are split over it by the rules (logical axis ``'expert'``), and the model's
``dispatch_fn`` becomes ``jaxrec.sharding.expert_parallel.expert_parallel_dispatch`` (explicit
all-to-all inside the step); a model without experts or without a ``dispatch_fn`` is an error.

The forward pass sees the parameters through ``gather``: the storage shards are cast to the
mixed-precision ``param_dtype`` and all-gathered to the compute layout (only ``tensor`` axes
left); its custom backward casts the gradient to ``reduce_dtype``, reduces it into the gradient
layout (reduce-scatter for FULL_SHARD / SHARD_GRAD_OP, all-reduce for NO_SHARD) and casts it back
to the stored (float32) dtype. With GSPMD (``implementation='gspmd'``) gather and reduction are
sharding constraints that XLA turns into collectives; ``jaxrec.sharding.shard_map_fsdp`` issues
them explicitly. Models with a ``layer_param_fn`` field (the transformer stack) get the gather
per layer, inside the scan and the remat region, so each layer's weights are gathered in the
forward pass and again in the backward pass instead of being held for the whole step.

Dimensions that do not divide their mesh axes raise a ValueError naming the parameter, the
dimension and the axes (``indivisible='error'``, the default); ``indivisible='replicate'`` keeps
such dimensions whole instead, and the unsharded-parameter check (``guardrail``) reports them;
``indivisible='pad'`` shards them anyway, stored zero-padded to a multiple of the axes' device
count and sliced back to the logical shape after the gather, so the model is exactly the unpadded
one (``jaxrec.sharding.padding``).
"""

from __future__ import annotations

import dataclasses
import enum
import math
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxrec.layers.transformer import REMAT_POLICIES, check_remat_policy
from jaxrec.sharding import expert_parallel
from jaxrec.sharding import padding as padding_lib
from jaxrec.sharding import rules as rules_lib
from jaxrec.sharding.hooks import ForwardHooks
from jaxrec.sharding.mesh import HOST_AXIS
from jaxrec.sharding.offload import HOST_MEMORY, check_offload_supported

PyTree = Any
LAYERS = 'layers'  # the logical axis of a scanned layer stack (kept in box names, never sharded)


class Dims(tuple):
  """Per-dimension mesh axes of one array (a tuple of tuples; a pytree leaf, unlike a tuple)."""


class Names(tuple):
  """Logical axis names of one array (a pytree leaf)."""


class Strategy(str, enum.Enum):
  """PyTorch FSDP's sharding strategies (see the module docstring)."""
  FULL_SHARD = 'FULL_SHARD'
  SHARD_GRAD_OP = 'SHARD_GRAD_OP'
  NO_SHARD = 'NO_SHARD'
  HYBRID_SHARD = 'HYBRID_SHARD'


def parse_strategy(name: Any) -> Strategy:
  if isinstance(name, Strategy):
    return name
  try:
    return Strategy(str(name).upper())
  except ValueError:
    raise ValueError(f'unknown FSDP strategy {name!r}; valid: {[s.value for s in Strategy]}'
                     ) from None


def _dtype(name: Any, argument: str):
  if name is None or name == '':
    return None
  try:
    return jnp.dtype(name)
  except TypeError:
    raise ValueError(f'{argument}={name!r} is not a dtype name') from None


@dataclasses.dataclass(frozen=True)
class MixedPrecision:
  """Dtypes as torch's ``MixedPrecision``; the stored (master) parameters stay float32.

  Attributes:
    param_dtype: dtype the parameters are cast to before the all-gather and for the forward and
      backward computation.
    reduce_dtype: dtype of the gradient reduction across devices (None: ``param_dtype``); the
      reduced gradient is cast back to float32 for the optimizer.
    compute_dtype: dtype the batch's floating inputs are cast to (None: ``param_dtype``). The
      activation dtype inside a model follows jnp promotion of inputs and parameters, or the
      model's own ``dtype`` attribute where it has one (the transformer).
  """
  param_dtype: Any = jnp.float32
  reduce_dtype: Any = None
  compute_dtype: Any = None

  def __post_init__(self):
    for name in ('param_dtype', 'reduce_dtype', 'compute_dtype'):
      object.__setattr__(self, name, _dtype(getattr(self, name), f'MixedPrecision.{name}'))
    if self.param_dtype is None:
      object.__setattr__(self, 'param_dtype', jnp.dtype(jnp.float32))
    for name in ('reduce_dtype', 'compute_dtype'):
      if getattr(self, name) is None:
        object.__setattr__(self, name, self.param_dtype)


IMPLEMENTATIONS = ('gspmd', 'shard_map')
INDIVISIBLE = ('error', 'replicate', 'pad')


@dataclasses.dataclass(frozen=True)
class ShardingConfig:
  """Everything about sharding the train state except the mesh.

  Attributes:
    strategy: a ``Strategy`` (or its name).
    mixed_precision: the dtypes.
    remat_policy: activation checkpointing of the whole forward pass (a key of
      ``jaxrec.layers.transformer.REMAT_POLICIES``; 'none' disables it). The transformer stack also
      takes a per-layer ``remat_policy`` of its own.
    offload_params: keep the stored parameters in host memory (``pinned_host``) between steps.
    offload_opt_state: keep the optimizer state in host memory between steps.
    indivisible: what to do with a dimension that does not divide its mesh axes: 'error',
      'replicate' (keep it whole) or 'pad' (shard it, zero-padded; see ``jaxrec.sharding.padding``).
    max_unsharded_fraction: fail when more than this fraction of the parameter elements is
      replicated over the strategy's sharding axes (the guardrail; not applied to NO_SHARD or when
      those axes have size 1).
    implementation: 'gspmd' (sharding annotations) or 'shard_map' (explicit collectives;
      FULL_SHARD and HYBRID_SHARD only).
  """
  strategy: Strategy = Strategy.NO_SHARD
  mixed_precision: MixedPrecision = MixedPrecision()
  remat_policy: str = 'none'
  offload_params: bool = False
  offload_opt_state: bool = False
  indivisible: str = 'error'
  max_unsharded_fraction: float = 0.1
  implementation: str = 'gspmd'

  def __post_init__(self):
    object.__setattr__(self, 'strategy', parse_strategy(self.strategy))
    check_remat_policy(self.remat_policy, 'sharding remat_policy')
    if self.indivisible not in INDIVISIBLE:
      raise ValueError(f'sharding indivisible={self.indivisible!r}; valid: {INDIVISIBLE}')
    if self.implementation not in IMPLEMENTATIONS:
      raise ValueError(f'sharding implementation={self.implementation!r}; valid: '
                       f'{IMPLEMENTATIONS}')
    if self.implementation == 'shard_map' and self.strategy not in (Strategy.FULL_SHARD,
                                                                     Strategy.HYBRID_SHARD):
      raise ValueError("sharding implementation='shard_map' implements FULL_SHARD and "
                       f'HYBRID_SHARD, not {self.strategy.value}')
    if not 0.0 <= self.max_unsharded_fraction <= 1.0:
      raise ValueError(f'sharding max_unsharded_fraction must be in [0, 1], got '
                       f'{self.max_unsharded_fraction}')

  @classmethod
  def from_config(cls, cfg: ml_collections.ConfigDict) -> 'ShardingConfig':
    """From a config's ``sharding`` section (see ``jaxrec.train.config.base_config``)."""
    return cls(strategy=cfg.strategy,
               mixed_precision=MixedPrecision(cfg.param_dtype, cfg.get('reduce_dtype') or None,
                                              cfg.get('compute_dtype') or None),
               remat_policy=cfg.remat_policy, offload_params=bool(cfg.offload_params),
               offload_opt_state=bool(cfg.offload_opt_state), indivisible=cfg.indivisible,
               max_unsharded_fraction=float(cfg.max_unsharded_fraction),
               implementation=cfg.implementation)


ROLES = ('params', 'grads', 'compute')


def shard_axes(strategy: Strategy, role: str, mesh: Mesh) -> tuple[str, ...]:
  """The mesh axes the rules' ``'fsdp'`` entry expands to for arrays of ``role``.

  Roles: 'params' (stored parameters), 'grads' (gradients and optimizer state), 'compute' (the
  layout the forward pass uses: never fsdp-sharded).
  """
  if role not in ROLES:
    raise ValueError(f'role must be one of {ROLES}, got {role!r}')
  if role == 'compute' or strategy is Strategy.NO_SHARD:
    return ()
  if strategy is Strategy.SHARD_GRAD_OP and role == 'params':
    return ()
  names = mesh.axis_names
  if strategy is Strategy.HYBRID_SHARD:
    if HOST_AXIS not in names:
      raise ValueError('HYBRID_SHARD needs the hierarchical (host, local) mesh: set '
                       'config.sharding.hosts (-1: one host group per process)')
    return (rules_lib.FSDP,) if rules_lib.FSDP in names else ()
  return tuple(a for a in (HOST_AXIS, rules_lib.FSDP) if a in names)


def axes_size(mesh: Mesh, axes: tuple[str, ...]) -> int:
  return math.prod(mesh.shape[a] for a in axes)


def array_mesh_axes(path: str, names: tuple, shape: tuple[int, ...], mesh: Mesh,
                    strategy: Strategy, role: str, indivisible: str = 'error'
                    ) -> Dims:
  """The mesh axes of each dimension of the array at ``path`` with logical axes ``names``.

  With ``indivisible='pad'`` an indivisible dimension keeps its axes (the plan pads the array,
  see ``padded_shape``); with 'replicate' it drops them.

  Raises:
    ValueError: (``indivisible='error'``) a dimension's size does not divide the product of its
      mesh axes; the message names the array, dimension, logical axis and mesh axes.
  """
  if len(names) != len(shape):
    raise ValueError(f'{path}: {len(names)} logical axis names {names} for shape {shape}')
  expand = shard_axes(strategy, role, mesh)
  out = []
  for d, (axes, size) in enumerate(zip(rules_lib.logical_to_mesh_axes(names, mesh), shape)):
    new: list[str] = []
    for a in axes:
      for b in (expand if a == rules_lib.FSDP else (a,)):
        if b not in new:
          new.append(b)
    n = axes_size(mesh, tuple(new))
    if size % n and indivisible != 'pad':
      if indivisible == 'error':
        raise ValueError(
            f'{path}: dimension {d} (logical axis {names[d]!r}, size {size}) does not divide '
            f'mesh axes {tuple(new)} (size {n}) under {strategy.value}; make it a multiple of '
            f"{n}, set config.sharding.indivisible='pad' to shard it zero-padded (exact), or "
            "'replicate' to keep it whole (the unsharded-parameter check then reports it)")
      # Drop the fsdp-expanded axes first (so every role of an array agrees on the others).
      new = [a for a in new if a not in expand]
      if size % axes_size(mesh, tuple(new)):
        new = []
    out.append(tuple(new))
  return Dims(out)


def to_pspec(dims: tuple[tuple[str, ...], ...]) -> P:
  return P(*[None if not t else (t[0] if len(t) == 1 else t) for t in dims])


def _is_box(x) -> bool:
  return isinstance(x, nn.meta.AxisMetadata)


def _path_str(path) -> str:
  return '/'.join(str(getattr(k, 'key', getattr(k, 'name', getattr(k, 'idx', k)))) for k in path)


@dataclasses.dataclass
class StatePlan:
  """Where every array of a train state lives, for one mesh and sharding config.

  Attributes:
    mesh: the device mesh.
    config: the sharding config.
    abstract: the stored state as ``jax.ShapeDtypeStruct`` s (padded shapes, see ``logical``).
    mask: the embedding mask of the parameters (``rules.embedding_mask``).
    state: ``TrainState`` of ``NamedSharding`` (storage layouts, memory kinds for offload).
    param_dims: parameters tree of per-dimension mesh axes of the stored parameters.
    grad_dims: the same for gradients (and the optimizer's per-parameter slots).
    param_names: parameters tree of logical axis names.
    batch: sharding of a batch array (rows over the batch axes).
    batch_axes: the mesh axes rows are split over.
    logical: the state as the model defines it (``abstract`` without padding; equal to it unless
      ``config.indivisible == 'pad'`` and some dimension does not divide its axes).
  """
  mesh: Mesh
  config: ShardingConfig
  abstract: Any
  mask: PyTree
  state: Any
  param_dims: PyTree
  grad_dims: PyTree
  param_names: PyTree
  batch: NamedSharding
  batch_axes: tuple[str, ...]
  logical: Any

  def sharding(self, dims, memory_kind: Optional[str] = None) -> NamedSharding:
    return NamedSharding(self.mesh, to_pspec(dims), memory_kind=memory_kind)

  @property
  def batch_divisor(self) -> int:
    """Global batch sizes must be a multiple of this (the product of the batch axes)."""
    return axes_size(self.mesh, self.batch_axes)

  @property
  def activation_rules(self) -> rules_lib.Rules:
    return rules_lib.mesh_rules(self.mesh)

  @property
  def padded(self) -> bool:
    """Whether any stored array is padded."""
    shapes = lambda tree: [x.shape for x in jax.tree.leaves(tree)]
    return shapes(self.abstract) != shapes(self.logical)

  def pad(self, state: Any) -> Any:
    """A state of the logical shapes (e.g. an unsharded one) zero-padded to the stored shapes."""
    return padding_lib.pad_tree(state, self.abstract)

  def unpad(self, state: Any) -> Any:
    """A stored state sliced to the logical shapes (what the unsharded model holds)."""
    return padding_lib.unpad_tree(state, self.logical)


def plan_state(boxed_abstract: Any, mesh: Mesh, config: ShardingConfig) -> StatePlan:
  """The plan for a state whose ``jax.eval_shape`` (boxed, see ``init_boxed_state``) is given.

  ``boxed_abstract`` is a ``jaxrec.train.state.TrainState`` (any struct dataclass with its fields
  ``step``, ``params``, ``batch_stats``, ``opt_state`` and ``rng``); the plan's ``state`` is one
  of the same class, of shardings.

  Every boxed leaf gets its mesh axes from its logical names (parameters with the 'params' role,
  optimizer slots with the 'grads' role); everything else (step, rng, Adam's count, the learning
  rate, BatchNorm statistics, a training recipe's ``recipe_state``) is replicated. Under ``indivisible='pad'`` a parameter and its
  optimizer slots are stored padded to a multiple of their gradient layout's device counts (which
  the stored and compute layouts divide).

  Raises:
    ValueError: a logical name without a rule, or an indivisible dimension (see
      ``array_mesh_axes``).
  """
  strategy = config.strategy

  def names_of(tree):
    return jax.tree.map(lambda b: Names(b.names) if _is_box(b) else Names((None,) * len(b.shape)),
                        tree, is_leaf=_is_box)

  all_names = jax.tree.leaves(names_of(boxed_abstract.params))
  rules_lib.check_names_covered([n for names in all_names for n in names], 'model parameters')
  expert_parallel.check_expert_parallel(mesh, None, all_names, config.implementation)

  def dims_tree(tree, role, prefix):
    def one(path, leaf):
      if not _is_box(leaf):
        return Dims(() for _ in leaf.shape)
      return array_mesh_axes(f'{prefix}/{_path_str(path)}', tuple(leaf.names), leaf.value.shape,
                             mesh, strategy, role, config.indivisible)
    return jax.tree_util.tree_map_with_path(one, tree, is_leaf=_is_box)

  param_dims = dims_tree(boxed_abstract.params, 'params', 'params')
  grad_dims = dims_tree(boxed_abstract.params, 'grads', 'params')
  opt_dims = dims_tree(boxed_abstract.opt_state, 'grads', 'opt_state')
  if config.offload_params or config.offload_opt_state:
    check_offload_supported(mesh.devices.flat)
  p_kind = HOST_MEMORY if config.offload_params else None
  o_kind = HOST_MEMORY if config.offload_opt_state else None

  def shard(dims, kind=None):
    return NamedSharding(mesh, to_pspec(dims), memory_kind=kind)

  replicated = NamedSharding(mesh, P())
  logical = nn.meta.unbox(boxed_abstract)

  def padded(tree, dims):
    return jax.tree.map(lambda a, d: jax.ShapeDtypeStruct(
        padding_lib.padded_shape(a.shape, d, mesh), a.dtype), tree, dims)

  abstract = logical.replace(params=padded(logical.params, grad_dims),
                             opt_state=padded(logical.opt_state, opt_dims))
  held = {}  # a training recipe's state (e.g. held soft labels of one batch): replicated
  if getattr(boxed_abstract, 'recipe_state', None) is not None:
    held['recipe_state'] = jax.tree.map(lambda _: replicated, abstract.recipe_state)
  state_shardings = type(boxed_abstract)(
      step=replicated,
      params=jax.tree.map(lambda d: shard(d, p_kind), param_dims),
      batch_stats=jax.tree.map(lambda _: replicated, abstract.batch_stats),
      opt_state=jax.tree.map(lambda d: shard(d, o_kind), opt_dims),
      rng=replicated, **held)
  batch_axes = tuple(a for a in rules_lib.BATCH_MESH_AXES if a in mesh.axis_names)
  return StatePlan(mesh=mesh, config=config, abstract=abstract,
                   mask=rules_lib.embedding_mask(boxed_abstract.params), state=state_shardings,
                   param_dims=param_dims, grad_dims=grad_dims,
                   param_names=names_of(boxed_abstract.params),
                   batch=NamedSharding(mesh, P(batch_axes)), batch_axes=batch_axes,
                   logical=logical)


# ----------------------------------------------------------------------------------------------
# The forward pass: boxing, gathering, remat (GSPMD implementation).


def box_params(params: PyTree, plan: StatePlan) -> PyTree:
  """Wraps each parameter in ``nn.Partitioned`` whose names are its gradient-layout mesh axes.

  The stored and compute layouts follow from it (``box_layouts``). A dimension whose logical name
  is ``'layers'`` keeps that name (flax's scan removes it when it slices out one layer), so a box
  seen inside a scanned block still knows its layout. A padded parameter gets a
  ``PaddedPartitioned`` box carrying its logical sizes (the gather slices the padding off).
  """
  def one(x, dims, names, logical, stored):
    entries = tuple(LAYERS if n == LAYERS else (t if t else None) for t, n in zip(dims, names))
    if logical.shape == stored.shape:
      return nn.Partitioned(x, names=entries)
    sizes = tuple(s if s != t else None for s, t in zip(logical.shape, stored.shape))
    return padding_lib.PaddedPartitioned(x, names=entries, sizes=sizes)
  return jax.tree.map(one, params, plan.grad_dims, plan.param_names, plan.logical.params,
                      plan.abstract.params)


def box_layouts(box: nn.Partitioned, strategy: Strategy, mesh: Mesh
                ) -> tuple[tuple[tuple[str, ...], ...], ...]:
  """(stored, gradient, compute) per-dimension mesh axes of a box made by ``box_params``.

  The gradient layout is recorded; the stored one lacks the axes only gradients are sharded over
  (SHARD_GRAD_OP), the compute one lacks every fsdp-expanded axis (see ``array_mesh_axes``:
  indivisible dimensions drop those axes first, so this holds there too).
  """
  grads = tuple(() if e is None or e == LAYERS else ((e,) if isinstance(e, str) else tuple(e))
                for e in box.names)
  g_axes = set(shard_axes(strategy, 'grads', mesh))
  only_grads = g_axes - set(shard_axes(strategy, 'params', mesh))
  stored = tuple(tuple(a for a in t if a not in only_grads) for t in grads)
  compute = tuple(tuple(a for a in t if a not in g_axes) for t in grads)
  return stored, grads, compute


def gather_tree(tree: PyTree, gather_one: Callable[[nn.Partitioned], jax.Array],
                skip_layers: bool) -> PyTree:
  """Applies ``gather_one`` to every box (``skip_layers``: except boxes with a 'layers' dim).

  A padded parameter is sliced to its logical shape after the gather.
  """
  def one(x):
    if not _is_box(x):
      return x
    if skip_layers and LAYERS in x.names:
      return x
    return padding_lib.unpad_gathered(gather_one(x), x)
  return jax.tree.map(one, tree, is_leaf=_is_box)


def has_layer_hook(model: nn.Module) -> bool:
  """Whether ``model`` takes a per-layer parameter map (``layer_param_fn``, the transformer)."""
  return any(f.name == 'layer_param_fn' for f in dataclasses.fields(model))


def remat_wrapper(policy_name: str) -> Callable[[Callable], Callable]:
  """``jax.checkpoint`` with the named policy ('none': the identity)."""
  if policy_name == 'none':
    return lambda f: f
  policy = REMAT_POLICIES[policy_name]
  return lambda f: jax.checkpoint(f, policy=policy)


def cast_features(feats: dict, dtype) -> dict:
  """Casts the floating arrays of a batch's features to ``dtype``."""
  return {k: v.astype(dtype) if jnp.issubdtype(v.dtype, jnp.floating) else v
          for k, v in feats.items()}


def with_gather_hooks(model: nn.Module, gather_one: Callable[[nn.Partitioned], jax.Array],
                      plan: StatePlan) -> tuple[nn.Module, Callable]:
  """The model with its per-layer gather set (if it takes one) and the ``prepare`` hook.

  ``prepare`` boxes the parameters and gathers every one outside a scanned layer stack; a model
  with ``layer_param_fn`` gathers the stacked ones itself, one layer at a time. On a mesh whose
  ``expert`` axis has more than one device the model's ``dispatch_fn`` is set to the
  expert-parallel all-to-all dispatch (``expert_parallel.with_expert_parallel``).
  """
  by_layer = has_layer_hook(model)
  compute_dtype = plan.config.mixed_precision.compute_dtype

  def prepare(params, feats):
    boxed = box_params(params, plan)
    return (gather_tree(boxed, gather_one, skip_layers=by_layer),
            cast_features(feats, compute_dtype))

  if by_layer:
    model = model.clone(layer_param_fn=lambda tree: gather_tree(tree, gather_one, False))
  model = expert_parallel.with_expert_parallel(model, plan.mesh, plan.param_names,
                                               plan.config.implementation)
  return model, prepare


def make_gspmd_hooks(plan: StatePlan, model: nn.Module
                     ) -> tuple[nn.Module, ForwardHooks]:
  """The model (per-layer gather set, if it takes one) and the GSPMD step hooks.

  The gather is a sharding constraint to the compute layout in ``param_dtype``; its backward
  constrains the gradient (cast to ``reduce_dtype``) to the gradient layout, which XLA implements
  as a reduce-scatter (or all-reduce) of the per-device partial gradients, then casts to float32.
  """
  mp = plan.config.mixed_precision
  strategy, mesh = plan.config.strategy, plan.mesh

  def gather_one(box: nn.Partitioned) -> jax.Array:
    _, grads, compute = box_layouts(box, strategy, mesh)
    compute_sharding, grad_sharding = plan.sharding(compute), plan.sharding(grads)
    master = box.value.dtype

    @jax.custom_vjp
    def gather(x):
      return jax.lax.with_sharding_constraint(x.astype(mp.param_dtype), compute_sharding)

    def fwd(x):
      return gather(x), None

    def bwd(_, g):
      g = jax.lax.with_sharding_constraint(g.astype(mp.reduce_dtype), grad_sharding)
      return (g.astype(master),)

    gather.defvjp(fwd, bwd)
    return gather(box.value)

  def reduce_grads(grads):
    return jax.lax.with_sharding_constraint(
        grads, jax.tree.map(plan.sharding, plan.grad_dims))

  model, prepare = with_gather_hooks(model, gather_one, plan)
  hooks = ForwardHooks(prepare=prepare, checkpoint=remat_wrapper(plan.config.remat_policy),
                       reduce_grads=reduce_grads)
  return model, hooks
