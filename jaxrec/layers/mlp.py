"""The one multi-layer perceptron of jaxrec, shared by every model.

Layer order follows FuxiCTR's ``MLP_Block`` (the implementation behind the BARS leaderboard)::

  for each hidden size h:  Dense(h) -> [BatchNorm] -> activation -> [Dropout]
  optional output layer:   Dense(output_dim) -> [output activation]

Initialisation follows FuxiCTR's ``BaseModel.reset_parameters``: every dense kernel is Xavier
(Glorot) *normal*, untruncated, std ``sqrt(2 / (fan_in + fan_out))`` (PyTorch's
``xavier_normal_``; note that ``flax.linen.initializers.glorot_normal`` is the *truncated* variant),
and every bias is zero.

BatchNorm mirrors ``torch.nn.BatchNorm1d`` defaults: epsilon 1e-5 and PyTorch momentum 0.1, which
is flax ``momentum=0.9`` (``running = 0.9 * running + 0.1 * batch``). One difference remains:
PyTorch updates the running variance with the unbiased batch variance, flax with the biased one
(a factor ``n / (n - 1)``, negligible at CTR batch sizes). Batch statistics are used when
``train=True`` and the running averages otherwise.

Logical axes: hidden kernels ``('mlp_in', 'mlp')``, hidden biases and BatchNorm scale/bias
``('mlp',)``; the output layer's kernel ``('mlp_in', 'mlp_out')`` and bias ``('mlp_out',)`` (kept
apart because the output width is small, 1 for a logit).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

# PyTorch's nn.init.xavier_normal_: an untruncated normal with variance 2 / (fan_in + fan_out).
xavier_normal = nn.initializers.variance_scaling(1.0, 'fan_avg', 'normal')

# Activations a config may name (a plain dict; a callable may be passed instead of a name).
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    'relu': nn.relu,
    'tanh': jnp.tanh,
    'sigmoid': nn.sigmoid,
    'gelu': nn.gelu,
    'silu': nn.silu,
    'leaky_relu': nn.leaky_relu,
    'identity': lambda x: x,
}

Activation = Union[str, Callable[[jax.Array], jax.Array]]


def get_activation(activation: Optional[Activation], argument: str = 'activation'
                   ) -> Callable[[jax.Array], jax.Array]:
  """Resolves an activation name (a key of ``ACTIVATIONS``, case-insensitive) or callable.

  ``None`` means the identity. ``argument`` names the offending argument in the error message.
  """
  if activation is None:
    return ACTIVATIONS['identity']
  if callable(activation):
    return activation
  if isinstance(activation, str) and activation.lower() in ACTIVATIONS:
    return ACTIVATIONS[activation.lower()]
  raise ValueError(f'{argument}={activation!r} is not a known activation; valid names: '
                   f'{sorted(ACTIVATIONS)} (or pass a callable)')


def _dense(features: int, axes: tuple[str, str], use_bias: bool, name: str) -> nn.Dense:
  return nn.Dense(features, use_bias=use_bias, name=name,
                  kernel_init=nn.with_logical_partitioning(xavier_normal, axes),
                  bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), axes[1:]))


class MLP(nn.Module):
  """A stack of dense layers, FuxiCTR ``MLP_Block`` style.

  Attributes:
    hidden_units: sizes of the hidden layers (may be empty).
    activation: hidden activation, a name in ``ACTIVATIONS`` or a callable.
    dropout_rate: dropout after every hidden layer (active only when ``train=True``; needs a
      ``'dropout'`` rng).
    batch_norm: BatchNorm after every hidden dense layer, before the activation.
    output_dim: if set, a final dense layer of this width (no BatchNorm, no dropout).
    output_activation: activation after the output layer (``None``: linear output).
    use_bias: whether dense layers have biases.

  Call:
    x: ``[batch, in]``.
    train: training mode (batch statistics, dropout) vs eval (running averages, no dropout).

  Returns:
    ``[batch, output_dim]`` with an output layer, else ``[batch, hidden_units[-1]]`` (``x``
    itself when there are neither hidden nor output layers).

  Example::

    mlp = MLP(hidden_units=(400, 400), dropout_rate=0.2, batch_norm=True, output_dim=1)
    variables = mlp.init({'params': key}, x, train=False)
    y, updates = mlp.apply(variables, x, train=True, rngs={'dropout': key},
                           mutable=['batch_stats'])   # y: [batch, 1]
  """
  hidden_units: Sequence[int] = ()
  activation: Activation = 'relu'
  dropout_rate: float = 0.0
  batch_norm: bool = False
  output_dim: Optional[int] = None
  output_activation: Optional[Activation] = None
  use_bias: bool = True

  def __post_init__(self):
    for i, h in enumerate(self.hidden_units):
      if int(h) != h or h < 1:
        raise ValueError(f'MLP: hidden_units[{i}] must be a positive int, got {h!r}')
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ValueError(f'MLP: dropout_rate must be in [0, 1), got {self.dropout_rate!r}')
    if self.output_dim is not None and (int(self.output_dim) != self.output_dim
                                        or self.output_dim < 1):
      raise ValueError(f'MLP: output_dim must be a positive int or None, got {self.output_dim!r}')
    get_activation(self.activation, 'MLP activation')
    get_activation(self.output_activation, 'MLP output_activation')
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    act = get_activation(self.activation)
    for i, h in enumerate(self.hidden_units):
      x = _dense(int(h), ('mlp_in', 'mlp'), self.use_bias, f'dense_{i}')(x)  # [B, h]
      if self.batch_norm:
        x = nn.BatchNorm(
            use_running_average=not train, momentum=0.9, epsilon=1e-5, name=f'bn_{i}',
            scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ('mlp',)),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ('mlp',)))(x)
      x = act(x)
      if self.dropout_rate > 0:
        x = nn.Dropout(self.dropout_rate, deterministic=not train, name=f'dropout_{i}')(x)
    if self.output_dim is not None:
      x = _dense(int(self.output_dim), ('mlp_in', 'mlp_out'), self.use_bias, 'output')(x)
      x = get_activation(self.output_activation)(x)
    return x
