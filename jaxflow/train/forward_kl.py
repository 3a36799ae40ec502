"""Forward KL (maximum likelihood): fit a flow to data by minimising -mean log q(x).

`loss` uses the inverse (data -> base) pass: build the flow so that this
direction is cheap (e.g. `invert` an autoregressive flow made for sampling).

    params, history = forward_kl.fit(key, flow, params, data, num_steps=2000, patience=5)

Data is moved to the device once; every chunk of steps draws its batch indices
on device from one random permutation of the rows per epoch, so no batch is
copied from the host.

Batches, dequantisation noise and log-det keys are functions of the key and the
step number alone, so a run resumed from a checkpoint (`checkpoint_dir=...`)
ends with the params of the uninterrupted run, and a data-parallel run
(`mesh=...`, see `jaxflow.train.sharding`) with those of the single-device run
up to the order of floating-point sums.
"""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from jaxflow.bijectors._checks import check_finite_rows, check_float, is_positive_int
from jaxflow.train import _loop, sharding
from jaxflow.train._step import init_state, make_step, with_clipping

DEFAULT_NUM_STEPS = 1000


def loss(params, flow, x, context=None, *, key=None) -> jax.Array:
    """-mean log q(x) over a batch.

    Args:
      params: the flow's params.
      flow: a `jaxflow.Flow`.
      x: (batch, *event_shape) data.
      context: None, one shared context, or (batch, *context_shape).
      key: PRNG key, used only by flows with stochastic log-dets.
    """
    return -jnp.mean(flow.log_prob(params, x, context, key=key))


def fit(
    key,
    flow,
    params,
    data,
    *,
    context=None,
    optimizer=None,
    batch_size: int = 256,
    num_steps: int | None = None,
    epochs: int | None = None,
    validation_fraction: float = 0.1,
    validation_data=None,
    validation_context=None,
    patience: int | None = None,
    restore_best: bool = True,
    dequantize=None,
    clip_norm: float | None = None,
    chunk_size: int = 100,
    progress: bool = True,
    on_nonfinite: str = "skip",
    callback=None,
    checkpoint_dir=None,
    checkpoint_every: int = 1000,
    mesh=None,
):
    """Fits `flow` to `data` by maximum likelihood with minibatch optimisation.

    Args:
      key: PRNG key (validation split, batch order, dequantisation noise).
      flow: a `jaxflow.Flow`.
      params: its starting params.
      data: (num_rows, *flow.event_shape) float array; integer data needs `dequantize`.
      context: for a conditional flow, (num_rows, *flow.context_shape), or one shared context.
      optimizer: an optax optimizer (default `optax.adam(1e-3)`).
      batch_size: rows per step (at most the number of training rows).
      num_steps: steps to take; or give `epochs` (passes over the training rows).
        Neither: 1000 steps.
      validation_fraction: share of the rows held out (at random) for validation,
        ignored when `validation_data` is given; 0 for none.
      validation_data, validation_context: a separate validation set.
      patience: stop after this many chunks without a better validation loss
        (the validation loss is evaluated after every chunk). None: never stop early.
      restore_best: return the params with the best validation loss seen rather
        than the last ones (when there is a validation set).
      dequantize: `(key, x_batch) -> x_batch` applied to every batch, e.g. adding
        uniform noise to integer data. The validation set is dequantised once.
      clip_norm: clip gradients to this global norm before the optimizer.
      chunk_size: steps per `lax.scan` chunk (one host round trip each).
      progress: show a progress bar.
      on_nonfinite: "skip" steps whose loss or gradient is not finite (a RuntimeWarning
        when more than 1% were), or "raise".
      callback: `(state, history) -> bool | None` called after every chunk; True stops.
      checkpoint_dir: a directory for checkpoints (`jaxflow.checkpoint`). If it
        holds one of a run of this model on this data (shapes, dtypes and a hash
        of the bytes) started with this key, training resumes from the newest,
        history and validation record included.
      checkpoint_every: steps between checkpoints, rounded up to whole chunks;
        one is also written when training stops.
      mesh: a `jax.sharding.Mesh` with a "data" axis: each batch is split over
        its devices (`batch_size` must be a multiple of their number).

    Returns:
      `(params, history)`; history holds numpy arrays "loss", "grad_norm" and
      "skipped" per step, "num_skipped", "validation_loss" and "validation_step"
      per chunk (empty without a validation set), and "best_step", the step at
      which the returned params were reached.

    Raises:
      ValueError: for data with NaN/inf rows, the wrong shape, or a context not
        matching the data, or a checkpoint of another model, data or key; TypeError
        for non-float data without `dequantize`.
    """
    # The first four equal split(key, 4)'s: checkpoints of runs made before the fifth key resume unchanged.
    split_key, batch_key, noise_key, log_det_key, validation_key = jax.random.split(key, 5)
    train, valid = _train_and_validation_sets(
        split_key, flow, (data, context), (validation_data, validation_context), validation_fraction, dequantize
    )
    if valid is None and patience is not None:
        raise ValueError("patience needs a validation set: pass validation_data=... or validation_fraction > 0.")
    if patience is not None and int(patience) < 1:
        raise ValueError(f"patience must be a positive number of chunks (or None: never stop early), got {patience}.")
    if not is_positive_int(batch_size):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")

    num_rows = train[0].shape[0]
    requested_batch_size, batch_size = batch_size, min(int(batch_size), num_rows)
    num_steps = _num_steps(num_steps, epochs, num_rows // batch_size)
    optimizer = with_clipping(optimizer, clip_norm)
    capped = "" if batch_size == requested_batch_size else f", capped from {requested_batch_size} at the training rows"
    sharding.check_batch(mesh, batch_size, f"batch_size{capped}")
    train, valid = sharding.replicate((train, valid), mesh)

    def batch_loss(params, x, context, step):
        if dequantize is not None:
            x = dequantize(jax.random.fold_in(noise_key, step), x)
        key = jax.random.fold_in(log_det_key, step) if flow.bijector.stochastic else None
        return loss(params, flow, x, context, key=key)

    step = make_step(batch_loss, optimizer)

    @functools.partial(jax.jit, static_argnums=2)
    def run_chunk(state, train, length):
        x, context = train

        def train_step(state, rows):
            batch = sharding.constrain_batch((x[rows], None if context is None else context[rows]), mesh)
            return step(state, *batch, state.step)

        rows = _batch_indices(batch_key, state.step, length, num_rows, batch_size)
        return sharding.constrain_replicated(_loop.scan_steps(train_step, state, (rows,)), mesh)

    tracker = None if valid is None else _BestOnValidation(flow, valid, patience, batch_size, validation_key)
    state, history = init_state(params, optimizer), None
    fitted = (data, context, validation_data, validation_context)  # a resumed run must see the same data
    origin = _loop.origin_of("forward_kl.fit", flow, None if checkpoint_dir is None else _loop.data_record(*fitted))
    snapshot = _loop.resume(checkpoint_dir, key, state, extra=None if tracker is None else state.params, origin=origin)
    if snapshot is not None:
        state, history = snapshot.state, snapshot.history
        if tracker is not None:
            tracker.resume(history, snapshot.extra)
            num_steps = len(history["loss"]) if tracker.exhausted else num_steps
    if tracker is not None:
        tracker.check_scores(state.params)
    state, history = _loop.run(
        lambda state, length: run_chunk(state, train, length),
        sharding.replicate(state, mesh),
        num_steps,
        chunk_size=chunk_size,
        progress=progress,
        on_nonfinite=on_nonfinite,
        callbacks=(tracker, callback),
        description="forward KL",
        history=history,
        save=_loop.saver(checkpoint_dir, key, None if tracker is None else tracker.checkpoint, origin=origin),
        checkpoint_every=checkpoint_every,
    )
    if tracker is None or tracker.best_params is None or not restore_best:
        best_params, best_step = state.params, int(state.step)
    else:
        best_params, best_step = tracker.best_params, tracker.best_step
    history.update(
        validation_loss=np.asarray([] if tracker is None else tracker.losses),
        validation_step=np.asarray([] if tracker is None else tracker.steps, int),
        best_step=np.asarray(best_step),
    )
    return best_params, history


class _BestOnValidation:
    """A callback: evaluates the validation loss after each chunk, keeps the best params, stops on patience.

    A flow with stochastic log-dets is scored with the same keys after every chunk, one per row,
    so that its validation losses differ by the params alone.
    """

    def __init__(self, flow, valid, patience, batch_size, key):
        log_det_keys = jax.random.split(key, valid[0].shape[0]) if flow.bijector.stochastic else None
        self.valid, self.patience = (*valid, log_det_keys), patience
        self.log_probs = jax.jit(functools.partial(_log_probs, flow, batch_size=batch_size))
        self.losses, self.steps = [], []
        self.best_loss, self.best_params, self.best_step, self.chunks_since_best = np.inf, None, -1, 0

    @property
    def exhausted(self) -> bool:
        return self.patience is not None and self.chunks_since_best >= self.patience

    def check_scores(self, params):
        """ValueError unless every validation row has a finite log q at `params` (the start of training)."""
        log_q = np.asarray(self.log_probs(params, *self.valid))
        if not np.isfinite(log_q).all():
            raise ValueError(f"forward_kl.fit: {self._nonfinite_rows(log_q)} at the start of training: outside "
                             "the flow's support? (every evaluation would read NaN or inf)")

    def _nonfinite_rows(self, log_q) -> str:
        bad = np.flatnonzero(~np.isfinite(log_q))
        row = np.asarray(self.valid[0][bad[0]])
        return (
            f"{bad.size} of {log_q.size} validation rows have log q = {log_q[bad[0]]} or another non-finite "
            f"value (the first: {np.array2string(row, threshold=8, precision=6)})"
        )

    def __call__(self, state, history):
        del history
        log_q = np.asarray(self.log_probs(state.params, *self.valid))
        value = -float(log_q.mean())
        if not np.isfinite(value):
            warnings.warn(f"forward_kl.fit: after step {int(state.step)}, {self._nonfinite_rows(log_q)}; such an "
                          "evaluation is never the best", RuntimeWarning, stacklevel=2)
        self.losses.append(value)
        self.steps.append(int(state.step))
        if value < self.best_loss:
            self.best_loss, self.best_params, self.best_step = value, state.params, int(state.step)
            self.chunks_since_best = 0
        else:
            self.chunks_since_best += 1
        return self.exhausted

    def checkpoint(self, state):
        """(history entries, best params) to save with `state`; the current params stand in until there is a best."""
        history = {"validation_loss": np.asarray(self.losses), "validation_step": np.asarray(self.steps, int)}
        return history, state.params if self.best_params is None else self.best_params

    def resume(self, history, best_params):
        """Takes up the record of a checkpointed run: its validation losses and best params."""
        self.losses, self.steps = history["validation_loss"].tolist(), history["validation_step"].tolist()
        losses = np.asarray(self.losses, float)
        losses = np.where(np.isnan(losses), np.inf, losses)  # as in __call__: NaN is never better
        best = int(np.argmin(losses)) if losses.size else -1
        if best < 0 or not losses[best] < np.inf:
            self.chunks_since_best = len(self.losses)
            return
        self.best_loss, self.best_params, self.best_step = losses[best], best_params, self.steps[best]
        self.chunks_since_best = len(self.losses) - 1 - best


def _log_probs(flow, params, x, context, log_det_keys, *, batch_size):
    """log q of each row of a whole set (n,), `batch_size` rows at a time (`log_det_keys`: one per row, or None)."""
    return jax.lax.map(
        lambda row: flow.log_prob(params, *row[:2], key=row[2]), (x, context, log_det_keys), batch_size=batch_size
    )


def _batch_indices(key, first_step, length: int, num_rows: int, batch_size: int) -> jax.Array:
    """Row indices (length, batch_size) for steps first_step, ...: one permutation per epoch, the tail dropped."""
    steps_per_epoch = num_rows // batch_size
    epochs, positions = jnp.divmod(first_step + jnp.arange(length), steps_per_epoch)
    first_epoch = first_step // steps_per_epoch
    num_epochs = (length - 1) // steps_per_epoch + 2  # static bound on the epochs one chunk touches
    permutations = jax.vmap(lambda e: jax.random.permutation(jax.random.fold_in(key, e), num_rows))(
        first_epoch + jnp.arange(num_epochs)
    )
    starts = (epochs - first_epoch) * num_rows + positions * batch_size
    return permutations.reshape(-1)[starts[:, None] + jnp.arange(batch_size)]


def _num_steps(num_steps, epochs, steps_per_epoch) -> int:
    if num_steps is not None and epochs is not None:
        raise ValueError(f"give num_steps or epochs, not both (got num_steps={num_steps}, epochs={epochs}).")
    if epochs is not None:
        if not is_positive_int(epochs):
            raise ValueError(f"epochs must be a positive int, got {epochs!r}.")
        return epochs * steps_per_epoch
    return DEFAULT_NUM_STEPS if num_steps is None else num_steps  # checked by the loop


def _train_and_validation_sets(key, flow, data, validation_data, fraction, dequantize):
    """Checked ((x, context), (x, context) or None); a validation set given as (None, None) is split off."""
    split_key, noise_key = jax.random.split(key)
    train = _checked(flow, *data, "data", dequantize)
    if validation_data[0] is None:
        if validation_data[1] is not None:
            raise ValueError("validation_context was given without validation_data; pass both, or neither.")
        train, valid = _split(split_key, *train, fraction)
    else:
        valid = _checked(flow, *validation_data, "validation_data", dequantize)
    if valid is not None and dequantize is not None:
        valid = (dequantize(noise_key, valid[0]), valid[1])  # once: a fixed validation set
    return train, valid


def _split(key, data, context, fraction):
    """Splits rows at random into ((train_x, train_context), (valid_x, valid_context) or None)."""
    if not 0 <= fraction < 1:
        raise ValueError(f"validation_fraction must be in [0, 1), got {fraction}.")
    num_valid = round(float(fraction) * data.shape[0])
    if num_valid == 0:
        return (data, context), None
    if num_valid == data.shape[0]:
        raise ValueError(f"validation_fraction={fraction} leaves no training rows out of {data.shape[0]}.")
    order = jax.random.permutation(key, data.shape[0])
    take = lambda rows: jax.tree.map(lambda a: a[rows], (data, context))  # noqa: E731
    return take(order[num_valid:]), take(order[:num_valid])


def _checked(flow, data, context, what, dequantize):
    """Data and context as device arrays of shape (num_rows, ...), after checking them."""
    data = jnp.asarray(data)
    if data.ndim != 1 + len(flow.event_shape) or tuple(data.shape[1:]) != flow.event_shape:
        raise ValueError(
            f"{what}: expected shape (num_rows, *{flow.event_shape}) for a flow with event shape "
            f"{flow.event_shape}, got {tuple(data.shape)}."
        )
    if data.shape[0] == 0:
        raise ValueError(f"{what} has no rows.")
    if dequantize is None:
        check_float(data, what, "pass dequantize=... for integer data")
    else:
        noisy = dequantize(jax.random.key(0), data)  # called on the concrete data, so it can check their range
        if noisy.shape != data.shape or not jnp.issubdtype(noisy.dtype, jnp.floating):
            raise TypeError(
                f"dequantize must return floats of the input's shape {data.shape}, got {noisy.dtype}{noisy.shape}."
            )
    check_finite_rows(data, what)
    return data, _checked_context(flow, context, data.shape[0], what)


def _checked_context(flow, context, num_rows, what):
    if flow.context_shape is None:
        if context is not None:
            raise ValueError(f"the flow is unconditional but {what} came with a context of shape {jnp.shape(context)}.")
        return None
    if context is None:
        raise ValueError(
            f"the flow is conditional: pass a context of shape (num_rows, *{flow.context_shape}) with {what}."
        )
    context = jnp.asarray(context)
    check_float(context, f"context of {what}", "cast it with .astype(jnp.float32)")
    if tuple(context.shape) == flow.context_shape:
        context = jnp.broadcast_to(context, (num_rows, *flow.context_shape))
    if tuple(context.shape) != (num_rows, *flow.context_shape):
        raise ValueError(
            f"the context of {what} should have shape {(num_rows, *flow.context_shape)} (one per row) or "
            f"{flow.context_shape} (shared), got {tuple(context.shape)}."
        )
    check_finite_rows(context, f"context of {what}")
    return context
