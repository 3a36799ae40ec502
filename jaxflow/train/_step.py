"""One optimisation step as a pure function, for users who write their own loop.

    optimizer = optax.adam(1e-3)
    state = init_state(params, optimizer)
    step = jax.jit(make_step(loss_fn, optimizer))      # loss_fn(params, *args) -> scalar
    state, info = step(state, batch)

A step whose loss, gradients or updated params are not finite leaves params and
optimizer state untouched (but for its schedules' step counts, which move on) and says
so in `info.skipped`: one bad batch never corrupts the params.

Optimizers that read the loss get it: `update` is called with `value=` (the loss),
`grad=` and `value_fn=` (the loss as a function of the params), as
`optax.contrib.reduce_on_plateau` and `optax.lbfgs` need; others ignore them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

Params = Any


class TrainState(NamedTuple):
    """Everything a training loop carries from one step to the next.

    Attributes:
      params: the model params (a pytree of float arrays).
      opt_state: the optax optimizer state.
      step: int32 scalar, the number of steps taken so far, skipped ones included
        (so batch order, keys, annealing and learning-rate schedules never stall on a
        bad step).
    """

    params: Params
    opt_state: optax.OptState
    step: jax.Array


class StepInfo(NamedTuple):
    """What one step reports.

    Attributes:
      loss: the loss at the params before the step.
      grad_norm: global norm of the gradient (before any clipping).
      skipped: True if the step was not applied because something was not finite.
    """

    loss: jax.Array
    grad_norm: jax.Array
    skipped: jax.Array


def init_state(params: Params, optimizer: optax.GradientTransformation) -> TrainState:
    """A fresh `TrainState` at step 0, its params as JAX arrays of JAX's dtypes.

    NumPy float64 params become float32 (without `jax_enable_x64`) here, as a jitted step would
    make them after the first chunk, so that checkpoints match the state a resumed run starts from.
    """
    params = jax.tree.map(jnp.asarray, params)
    return TrainState(params, optimizer.init(params), jnp.zeros((), jnp.int32))


def with_clipping(
    optimizer: optax.GradientTransformation | None, clip_norm: float | None
) -> optax.GradientTransformation:
    """`optimizer` (default `optax.adam(1e-3)`), preceded by global-norm clipping if `clip_norm` is set."""
    optimizer = optax.adam(1e-3) if optimizer is None else optimizer
    if clip_norm is None:
        return optimizer
    if not clip_norm > 0:
        raise ValueError(f"clip_norm must be a positive number or None, got {clip_norm}.")
    return optax.chain(optax.clip_by_global_norm(clip_norm), optimizer)


def make_step(
    loss_fn: Callable[..., jax.Array], optimizer: optax.GradientTransformation, *, skip_nonfinite: bool = True
) -> Callable[..., tuple[TrainState, StepInfo]]:
    """Builds `step(state, *args) -> (state, info)`, one gradient step on `loss_fn(params, *args)`.

    The step is pure and not jitted: jit it yourself, or run it inside `lax.scan`.

    Args:
      loss_fn: `(params, *args) -> scalar` to minimise.
      optimizer: an optax gradient transformation.
      skip_nonfinite: if True, a step with a non-finite loss, gradient or
        updated params keeps the old params and optimizer state (its schedules'
        step counts excepted) and reports `skipped=True`. If False, every step is
        applied as computed.

    Returns:
      `step(state, *args) -> (TrainState, StepInfo)`.
    """
    value_and_grad = jax.value_and_grad(loss_fn)
    optimizer = optax.with_extra_args_support(optimizer)

    def step(state: TrainState, *args) -> tuple[TrainState, StepInfo]:
        loss, grads = value_and_grad(state.params, *args)
        updates, opt_state = optimizer.update(
            grads, state.opt_state, state.params, value=loss, grad=grads, value_fn=lambda p: loss_fn(p, *args)
        )
        params = optax.apply_updates(state.params, updates)
        grad_norm = optax.global_norm(grads)
        if skip_nonfinite:
            finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & _all_finite(params)
            kept_opt_state = _with_schedules_of(state.opt_state, opt_state)
            params, opt_state = optax.tree.where(finite, (params, opt_state), (state.params, kept_opt_state))
            skipped = ~finite
        else:
            skipped = jnp.zeros((), bool)
        return TrainState(params, opt_state, state.step + 1), StepInfo(loss, grad_norm, skipped)

    return step


_SCHEDULE_STATES = (optax.ScaleByScheduleState, optax.InjectHyperparamsState, optax.InjectStatefulHyperparamsState)


def _with_schedules_of(old, new):
    """The optimizer state `old` with the schedules' step counts (and hyperparams they set) of `new`.

    Moments, accumulators and every other counter (Adam's bias correction) stay as in `old`.
    """
    def pick(old_node, new_node):
        if isinstance(old_node, optax.ScaleByScheduleState):
            return new_node
        if isinstance(old_node, _SCHEDULE_STATES):  # injected hyperparams: the inner optimizer's state stays
            return new_node._replace(inner_state=_with_schedules_of(old_node.inner_state, new_node.inner_state))
        return old_node

    return jax.tree.map(pick, old, new, is_leaf=lambda node: isinstance(node, _SCHEDULE_STATES))


def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)
