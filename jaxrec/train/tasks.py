"""Tasks: what the one loop trains, and how it is scored.

A task tells the trainer, for the model's outputs on a batch,

* ``row_loss``: the training loss of every row (the step takes its weighted mean, padding rows
  have weight 0);
* ``smoothed_row_loss``: the same against label-smoothed targets (the label-smoothing recipe);
* ``distill_row_loss``: the divergence of a student's outputs from a teacher's soft labels at a
  temperature (the DLB and SMC recipes, ``jaxrec.train.recipes``);
* ``view``: a train-time view of a batch's inputs from a key (data augmentation; identity for CTR,
  whose views differ through their dropout keys);
* ``eval_outputs``: what the evaluation step keeps of a batch's outputs, on the device (the
  outputs themselves, or per-row statistics when they are too large to bring to the host);
* ``train_metrics``: extra metrics of the training step (e.g. per-modality losses);
* ``metrics``: the evaluation metrics of scored rows (host numpy), ``monitors`` the metrics that
  may pick the best epoch, and ``summary`` the line the loop prints per epoch.

``CTRTask`` (binary labels, one logit per row: AUC, logloss, NE), ``ClassificationTask``
(integer classes, one logit per class: accuracy, NLL, ECE) and ``LanguageModelTask`` (next-token
prediction over mixed-modal sequences: loss and perplexity overall and per modality) are the
tasks; :func:`task_for` picks the one of a dataset's schema. Example::

  task = task_for(data.schema)                # ClassificationTask for an ImageSchema
  loss = weighted_mean(task.row_loss(logits, batch), batch['weight'])
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrec.data.image_transforms import random_crop_flip
from jaxrec.data.schema import FeatureSchema, ImageSchema, SequenceSchema
from jaxrec.errors import ConfigError
from jaxrec.train.metrics import classification_metrics, ctr_metrics

TASKS = ('ctr', 'classification', 'lm')


def weighted_mean(per_row: jnp.ndarray, weight: jnp.ndarray) -> jnp.ndarray:
  """Mean of ``per_row [B]`` over the rows with weight > 0 (padding rows have weight 0)."""
  return jnp.sum(per_row * weight) / jnp.maximum(jnp.sum(weight), 1.0)


class Task:
  """The interface (see the module docstring); subclasses fill it in."""
  name = ''
  # monitor name -> (metric, sign): the loop maximises sign * metrics[metric]; 'auc-logloss'
  # style combinations are written as several (metric, sign) pairs.
  monitors: Mapping[str, tuple[tuple[str, float], ...]] = {}
  soft_labels = True  # has distill_row_loss (DLB and SMC need it)

  def row_loss(self, outputs: jnp.ndarray, batch: dict) -> jnp.ndarray:
    raise NotImplementedError

  def smoothed_row_loss(self, outputs: jnp.ndarray, batch: dict, smoothing: float) -> jnp.ndarray:
    raise NotImplementedError

  def distill_row_loss(self, student: jnp.ndarray, teacher: jnp.ndarray,
                       temperature: float) -> jnp.ndarray:
    raise NotImplementedError

  def view(self, feats: dict, key: jax.Array) -> dict:
    """A train-time view of the model inputs (the identity unless the task augments)."""
    del key
    return feats

  def eval_outputs(self, outputs: jnp.ndarray, batch: dict) -> jnp.ndarray:
    """What evaluation keeps of a batch's outputs (runs on the device, inside the eval step)."""
    del batch
    return outputs

  def train_metrics(self, outputs: jnp.ndarray, batch: dict) -> dict:
    """Extra metrics of a training step's outputs (none by default)."""
    del outputs, batch
    return {}

  def metrics(self, labels: np.ndarray, outputs: np.ndarray, weights: np.ndarray) -> dict:
    raise NotImplementedError

  def summary(self, metrics: Mapping[str, float]) -> str:
    raise NotImplementedError

  def monitor_value(self, metrics: Mapping[str, float], monitor: str) -> float:
    """Higher is better (e.g. auc, -logloss, accuracy, -nll)."""
    self.check_monitor(monitor)
    return float(sum(sign * metrics[m] for m, sign in self.monitors[monitor]))

  def check_monitor(self, monitor: str) -> None:
    if monitor not in self.monitors:
      raise ConfigError(f'config.monitor={monitor!r} is not a metric of the {self.name} task; '
                        f'choose one of {list(self.monitors)}')


@dataclasses.dataclass(frozen=True)
class CTRTask(Task):
  """Binary click prediction: outputs are logits ``[B]``, labels float 0/1 ``[B]``."""
  name = 'ctr'
  monitors = {'auc': (('auc', 1.0),), 'logloss': (('logloss', -1.0),),
              'auc-logloss': (('auc', 1.0), ('logloss', -1.0))}

  def row_loss(self, outputs, batch):
    return optax.sigmoid_binary_cross_entropy(outputs, batch['label'])

  def smoothed_row_loss(self, outputs, batch, smoothing):
    return optax.sigmoid_binary_cross_entropy(
        outputs, batch['label'] * (1.0 - smoothing) + 0.5 * smoothing)

  def distill_row_loss(self, student, teacher, temperature):
    """KL(Bernoulli(sigmoid(teacher / T)) || Bernoulli(sigmoid(student / T))) per row."""
    t, s = teacher / temperature, student / temperature
    p = jax.nn.sigmoid(t)
    return (p * (jax.nn.log_sigmoid(t) - jax.nn.log_sigmoid(s))
            + (1.0 - p) * (jax.nn.log_sigmoid(-t) - jax.nn.log_sigmoid(-s)))

  def metrics(self, labels, outputs, weights):
    return ctr_metrics(labels, outputs, weights)

  def summary(self, metrics):
    return f'auc {metrics["auc"]:.6f} logloss {metrics["logloss"]:.6f}'


@dataclasses.dataclass(frozen=True)
class ClassificationTask(Task):
  """Classification into ``num_classes``: outputs are logits ``[B, C]``, labels int32 ``[B]``.

  Attributes:
    num_classes: C.
    augment_padding: train-time random crop after zero padding by this many pixels per side
      (0: no crop); images only.
    augment_flip: train-time random horizontal flip; images only.
    ece_bins: confidence bins of the expected calibration error.
  """
  num_classes: int = 10
  augment_padding: int = 2
  augment_flip: bool = True
  ece_bins: int = 15
  name = 'classification'
  monitors = {'accuracy': (('accuracy', 1.0),), 'nll': (('nll', -1.0),)}

  def __post_init__(self):
    if self.num_classes < 2:
      raise ConfigError(f'ClassificationTask: num_classes must be >= 2, got {self.num_classes}')
    if self.augment_padding < 0:
      raise ConfigError('config.task_options.augment_padding must be >= 0, got '
                        f'{self.augment_padding}')
    if self.ece_bins < 1:
      raise ConfigError(f'config.task_options.ece_bins must be >= 1, got {self.ece_bins}')

  def _labels(self, batch):
    return jax.nn.one_hot(batch['label'], self.num_classes, dtype=jnp.float32)

  def row_loss(self, outputs, batch):
    return optax.softmax_cross_entropy_with_integer_labels(outputs.astype(jnp.float32),
                                                           batch['label'])

  def smoothed_row_loss(self, outputs, batch, smoothing):
    targets = optax.smooth_labels(self._labels(batch), smoothing)
    return optax.softmax_cross_entropy(outputs.astype(jnp.float32), targets)

  def distill_row_loss(self, student, teacher, temperature):
    """KL(softmax(teacher / T) || softmax(student / T)) per row (summed over classes)."""
    log_t = jax.nn.log_softmax(teacher.astype(jnp.float32) / temperature)
    log_s = jax.nn.log_softmax(student.astype(jnp.float32) / temperature)
    return jnp.sum(jnp.exp(log_t) * (log_t - log_s), axis=-1)

  def view(self, feats, key):
    if 'image' not in feats or (self.augment_padding == 0 and not self.augment_flip):
      return feats
    return dict(feats, image=random_crop_flip(feats['image'], key, self.augment_padding,
                                              self.augment_flip))

  def metrics(self, labels, outputs, weights):
    return classification_metrics(labels, outputs, weights, self.ece_bins)

  def summary(self, metrics):
    return (f'accuracy {metrics["accuracy"]:.4f} nll {metrics["nll"]:.4f} '
            f'ece {metrics["ece"]:.4f}')


@dataclasses.dataclass(frozen=True)
class LanguageModelTask(Task):
  """Next-token prediction over token sequences (``jaxrec.data.schema.SequenceSchema``).

  Outputs are logits ``[B, L, V]``; a batch holds ``label`` (the next token of each input,
  ``int32 [B, L]``), ``target_modality`` (``int32 [B, L]``) and ``loss_mask`` (``float32 [B, L]``,
  1 where the target counts). A row's loss is the mean negative log-likelihood of its counted
  targets (rows of one dataset hold the same number of tokens, so the step's row mean is the token
  mean). Evaluation keeps per row, for every modality, the summed NLL and the number of counted
  targets (``eval_outputs``: ``[B, 2 M]``), and reports ``loss`` / ``ppl`` over all targets and
  ``<modality>_loss`` / ``<modality>_ppl`` per target modality (nats; ppl = exp(loss)).

  Attributes:
    modality_names: one name per modality id.
  """
  modality_names: tuple[str, ...] = ('text', 'image')
  name = 'lm'
  soft_labels = False  # no distillation of per-token soft labels (DLB / SMC) yet

  @property
  def monitors(self):
    out = {'loss': (('loss', -1.0),)}
    out.update({f'{m}_loss': ((f'{m}_loss', -1.0),) for m in self.modality_names})
    return out

  def _token_nll(self, outputs, batch):
    return optax.softmax_cross_entropy_with_integer_labels(outputs.astype(jnp.float32),
                                                           batch['label'])  # [B, L]

  def _row_mean(self, per_token, batch):
    mask = batch['loss_mask'].astype(jnp.float32)
    return jnp.sum(per_token * mask, axis=-1) / jnp.maximum(jnp.sum(mask, axis=-1), 1.0)

  def row_loss(self, outputs, batch):
    return self._row_mean(self._token_nll(outputs, batch), batch)

  def smoothed_row_loss(self, outputs, batch, smoothing):
    targets = optax.smooth_labels(jax.nn.one_hot(batch['label'], outputs.shape[-1]), smoothing)
    return self._row_mean(optax.softmax_cross_entropy(outputs.astype(jnp.float32), targets), batch)

  def _per_modality(self, per_token, batch):
    """``[B, 2 M]``: per modality, the masked sum of ``per_token`` and the counted targets."""
    mask = batch['loss_mask'].astype(jnp.float32)
    onehot = jax.nn.one_hot(batch['target_modality'], len(self.modality_names)) * mask[..., None]
    return jnp.concatenate([jnp.einsum('bl,blm->bm', per_token, onehot),
                            jnp.sum(onehot, axis=1)], axis=-1)

  def eval_outputs(self, outputs, batch):
    return self._per_modality(self._token_nll(outputs, batch), batch)

  def train_metrics(self, outputs, batch):
    stats = self._per_modality(jax.lax.stop_gradient(self._token_nll(outputs, batch)), batch)
    stats = jnp.sum(stats * batch['weight'][:, None], axis=0)
    m = len(self.modality_names)
    return {f'{name}_loss': stats[i] / jnp.maximum(stats[m + i], 1.0)
            for i, name in enumerate(self.modality_names)}

  def metrics(self, labels, outputs, weights):
    del labels
    stats = np.asarray(outputs, np.float64)
    m = len(self.modality_names)
    if stats.ndim != 2 or stats.shape[1] != 2 * m:
      raise ValueError(f'lm metrics: per-row statistics {stats.shape} must be [rows, {2 * m}] '
                       '(LanguageModelTask.eval_outputs)')
    stats = stats[np.asarray(weights).reshape(-1) > 0]
    if not len(stats) or stats[:, m:].sum() == 0:
      raise ValueError('lm metrics of zero counted tokens')
    nll, count = stats[:, :m].sum(axis=0), stats[:, m:].sum(axis=0)
    out = {'loss': float(nll.sum() / count.sum()), 'rows': int(len(stats)),
           'tokens': int(count.sum())}
    out['ppl'] = float(np.exp(out['loss']))
    for i, name in enumerate(self.modality_names):
      loss = float(nll[i] / count[i]) if count[i] else float('nan')
      out.update({f'{name}_loss': loss, f'{name}_ppl': float(np.exp(loss)),
                  f'{name}_tokens': int(count[i])})
    return out

  def summary(self, metrics):
    return f'loss {metrics["loss"]:.4f} ' + ' '.join(
        f'{m} {metrics[f"{m}_loss"]:.4f}' for m in self.modality_names)


def task_for(schema: Any, name: str = 'auto', options: Mapping[str, Any] | None = None) -> Task:
  """The task of a dataset's ``schema`` (``name='auto'``) or the one named, with ``options``
  (``config.task_options``); ConfigError for a task that does not fit the data or an option the
  task does not take."""
  options = dict(options or {})
  if name == 'auto':
    name = ('classification' if isinstance(schema, ImageSchema) else
            'lm' if isinstance(schema, SequenceSchema) else 'ctr')
  if name not in TASKS:
    raise ConfigError(f'config.task must be auto or one of {TASKS}, got {name!r}')
  if name == 'ctr':
    if not isinstance(schema, FeatureSchema):
      raise ConfigError(f'config.task=ctr needs a CTR dataset; this one has a {type(schema).__name__}')
    cls, fixed = CTRTask, {}
  elif name == 'lm':
    if not isinstance(schema, SequenceSchema):
      raise ConfigError('config.task=lm needs a token-sequence dataset (a SequenceSchema); this '
                        f'one has a {type(schema).__name__}')
    cls, fixed = LanguageModelTask, {'modality_names': tuple(schema.modality_names)}
  else:
    if not isinstance(schema, ImageSchema):
      raise ConfigError('config.task=classification needs an image dataset (an ImageSchema); '
                        f'this one has a {type(schema).__name__}')
    cls, fixed = ClassificationTask, {'num_classes': schema.num_classes}
  valid = [f.name for f in dataclasses.fields(cls) if f.name not in fixed]
  unknown = sorted(set(options) - set(valid))
  if unknown:
    raise ConfigError(f'config.task_options: the {name} task does not take {unknown}; its options '
                      f'are {valid}')
  return cls(**fixed, **options)
