"""Reverse KL (variational inference): fit a flow q to an unnormalised log-density log p~.

The losses are reparameterised Monte Carlo estimates from samples of q, drawn with
the forward (base -> data) pass alone, so build the flow so that sampling is cheap:

    elbo_loss = mean over x ~ q of [log q(x) - log p~(x)]          (-ELBO)
    iwae_loss = -mean over groups of log mean_k [p~(x_k) / q(x_k)]  (-IWAE bound)

    params, history = reverse_kl.fit(key, flow, params, log_target, num_steps=2000)

`log_target` is any JAX function mapping one event (a flat vector for a
vector-valued flow) to a scalar; it is vmapped over the samples here.

Constrained parameters: make the flow's samples live on the constrained space by
ending the bijector with a fixed map onto it; the log-det of that map enters
log q automatically, so `log_target` is simply the density on the constrained
space (no manual Jacobian terms). For a posterior over positive parameters:

    body = jf.stack(jf.chain(jf.bijectors.affine_coupling(d), jf.bijectors.reverse()), 8)
    flow = jf.Flow(jf.standard_normal(d), jf.chain(body, jf.bijectors.exp()))      # samples > 0

Use `jf.bijectors.sigmoid()` for parameters in (0, 1) and `softplus()` for a
gentler map onto (0, inf). For a mix, end with a bijector that applies the map
only where a mask is True (y = where(mask, exp(x), x), log_det = sum(where(mask, x, 0))).

References: Rezende & Mohamed (2015), https://arxiv.org/abs/1505.05770;
Roeder et al. (2017) sticking the landing, https://arxiv.org/abs/1703.09194;
Burda et al. (2015) IWAE, https://arxiv.org/abs/1509.00519.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxflow.bijectors._checks import is_positive_int
from jaxflow.train import _loop, sharding
from jaxflow.train._log_target import check_log_target, log_target_values
from jaxflow.train._step import init_state, make_step, with_clipping

OBJECTIVES = ("elbo", "iwae")


def elbo_loss(
    params, flow, key, log_target, num_samples: int, *, stick_the_landing: bool = False, temperature=1.0, mesh=None
):
    """The negative ELBO, mean(log q(x) - log p~(x) / temperature) over `num_samples` draws x ~ q.

    Args:
      params: the flow's params.
      flow: a `jaxflow.Flow`.
      key: PRNG key for the draws.
      log_target: one event -> scalar unnormalised log-density.
      num_samples: Monte Carlo draws.
      stick_the_landing: evaluate log q with gradient-stopped params (an extra
        inverse pass), which drops the score term: same expected gradient, and
        zero variance when q matches the target (Roeder et al. 2017).
      temperature: the target is p~^(1 / temperature); annealing starts high.
      mesh: split the draws over the "data" axis of this mesh (`jaxflow.train.sharding`).
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples}.")
    sharding.check_batch(mesh, num_samples, "num_samples")
    if stick_the_landing:
        key, log_det_key = jax.random.split(key)  # a stochastic log-det's estimate must not reuse the draws' noise
    x, log_q = sharding.constrain_batch(flow.sample_and_log_prob(params, key, (num_samples,)), mesh)
    if stick_the_landing:
        log_q = flow.log_prob(jax.lax.stop_gradient(params), x, key=log_det_key)
    return jnp.mean(log_q - log_target_values(log_target, x, flow.event_shape) / temperature)


def iwae_loss(params, flow, key, log_target, num_samples: int, *, num_importance: int, temperature=1.0, mesh=None):
    """The negative importance-weighted bound (IWAE), averaged over num_samples // num_importance groups.

    Each group of `num_importance` draws gives log mean_k exp(log w_k), with
    log w = log p~ / temperature - log q; `num_importance=1` is the ELBO. The
    bound tightens towards log Z as `num_importance` grows. With a `mesh`, the
    groups are split over its "data" axis.
    """
    if num_importance < 1 or num_samples % num_importance:
        raise ValueError(
            f"num_samples ({num_samples}) must be a positive multiple of num_importance ({num_importance})."
        )
    groups = (num_samples // num_importance, num_importance)
    sharding.check_batch(mesh, groups[0], "num_samples // num_importance")
    x, log_q = sharding.constrain_batch(flow.sample_and_log_prob(params, key, groups), mesh)
    log_weights = log_target_values(log_target, x, flow.event_shape) / temperature - log_q
    return -jnp.mean(jax.nn.logsumexp(log_weights, axis=1) - jnp.log(num_importance))


MIN_FINAL_BETA = 0.9  # a fit whose last step targets p~^beta below it warns: it ends on another target


def annealing_schedule(num_steps: int, *, initial_beta: float = 0.01) -> optax.Schedule:
    """beta(step), rising geometrically from `initial_beta` to 1 over `num_steps`, then 1.

    The loss at step t targets p~^beta(t) (temperature 1 / beta), which starts
    flat and lets q spread over all modes before the target sharpens.
    """
    if num_steps < 0:
        raise ValueError(f"annealing_schedule: num_steps must be >= 0 (0: no annealing), got {num_steps}.")
    if num_steps == 0:
        return optax.constant_schedule(1.0)
    if not 0 < initial_beta < 1:
        raise ValueError(f"initial_beta must be in (0, 1), got {initial_beta}.")
    return optax.exponential_decay(initial_beta, num_steps, decay_rate=1.0 / initial_beta, end_value=1.0)


def fit(
    key,
    flow,
    params,
    log_target: Callable,
    *,
    num_samples: int = 64,
    optimizer=None,
    num_steps: int = 2000,
    objective: str = "elbo",
    num_importance: int = 8,
    stick_the_landing: bool = False,
    anneal_steps: int | optax.Schedule = 0,
    clip_norm: float | None = None,
    chunk_size: int = 100,
    progress: bool = True,
    on_nonfinite: str = "skip",
    callback=None,
    checkpoint_dir=None,
    checkpoint_every: int = 1000,
    mesh=None,
):
    """Fits `flow` to the unnormalised density exp(log_target) by minimising a reverse-KL objective.

    Args:
      key: PRNG key for the draws (step t uses fold_in(key, t)).
      flow: a `jaxflow.Flow` (unconditional).
      params: its starting params.
      log_target: one event -> scalar unnormalised log-density.
      num_samples: draws per step.
      optimizer: an optax optimizer (default `optax.adam(1e-3)`).
      num_steps: optimisation steps.
      objective: "elbo" or "iwae" (groups of `num_importance` draws).
      num_importance: draws per IWAE bound.
      stick_the_landing: the STL gradient for the ELBO.
      anneal_steps: steps of `annealing_schedule` (0: no annealing), or any
        optax-style schedule step -> beta in (0, 1]; a RuntimeWarning if the last
        step's beta is below `MIN_FINAL_BETA` (0.9).
      clip_norm: clip gradients to this global norm before the optimizer.
      chunk_size: steps per `lax.scan` chunk (one host round trip each).
      progress: show a progress bar.
      on_nonfinite: "skip" steps whose loss or gradient is not finite (a RuntimeWarning
        when more than 1% were), or "raise".
      callback: `(state, history) -> bool | None` called after every chunk; True stops.
      checkpoint_dir: a directory for checkpoints (`jaxflow.checkpoint`). If it
        holds one of a run of this model started with this key, on this
        target (its values at fixed points), objective and annealing, training
        resumes from the newest (draws depend on the key and step alone, so
        the resumed run ends with the uninterrupted run's params).
      checkpoint_every: steps between checkpoints, rounded up to whole chunks;
        one is also written when training stops.
      mesh: a `jax.sharding.Mesh` with a "data" axis: each step's draws (IWAE:
        groups of draws) are split over its devices, whose number must divide them.

    Returns:
      `(params, history)`; history holds numpy arrays "loss" (the objective
      against the annealed target), "grad_norm", "skipped" and "beta" per step,
      and "num_skipped".
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}.")
    if objective == "iwae" and stick_the_landing:
        raise ValueError("stick_the_landing applies to the ELBO; it biases the IWAE gradient, so use objective='elbo'.")
    if flow.context_shape is not None:
        raise ValueError("reverse_kl.fit fits an unconditional flow; this one needs a context.")
    check_log_target(log_target, flow.event_shape)
    schedule = anneal_steps if callable(anneal_steps) else annealing_schedule(anneal_steps)
    final_beta = float(schedule(num_steps - 1)) if is_positive_int(num_steps) else 1.0
    if final_beta < MIN_FINAL_BETA:
        warnings.warn(
            f"reverse_kl.fit: the last of the {num_steps} steps targets p~^beta with beta = {final_beta:.3g}, so the "
            "fit ends on a tempered (wider) target; let the annealing end before the last step (anneal_steps <= "
            "num_steps)", RuntimeWarning, stacklevel=2,
        )
    if objective == "elbo":
        objective_loss = functools.partial(elbo_loss, stick_the_landing=stick_the_landing)
    else:
        objective_loss = functools.partial(iwae_loss, num_importance=num_importance)

    def loss_fn(params, key, temperature):
        return objective_loss(params, flow, key, log_target, num_samples, temperature=temperature, mesh=mesh)

    optimizer = with_clipping(optimizer, clip_norm)
    step = make_step(loss_fn, optimizer)

    @functools.partial(jax.jit, static_argnums=2)
    def run_chunk(state, key, length):
        steps = state.step + jnp.arange(length)
        state_and_infos = _loop.scan_steps(step, state, (_loop.step_keys(key, steps), 1.0 / jax.vmap(schedule)(steps)))
        return sharding.constrain_replicated(state_and_infos, mesh)

    state, history = _loop.run_resumable(
        lambda state, length: run_chunk(state, key, length),
        init_state(params, optimizer),
        num_steps,
        key=key,
        origin=_loop.origin_of(
            "reverse_kl.fit", flow,
            None if checkpoint_dir is None else _problem(flow, log_target, objective, num_importance, schedule),
        ),
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=checkpoint_every,
        mesh=mesh,
        chunk_size=chunk_size,
        progress=progress,
        on_nonfinite=on_nonfinite,
        callbacks=(callback,),
        description=f"reverse KL ({objective})",
    )
    history["beta"] = np.asarray(jax.vmap(schedule)(jnp.arange(history["loss"].size)))
    return state.params, history


_PROBE_STEPS = (0, 10, 100, 1000, 10_000)  # where a checkpoint's origin records the annealing schedule


def _problem(flow, log_target, objective, num_importance, schedule) -> str:
    """What the checkpoints record of the problem: the target, the objective and the annealing.

    The target by its values (`_loop.rounded`) at the flow's reference draws, which lie in the
    flow's support: a target defined on x > 0 is -inf or NaN at most normal draws, where targets
    of other rates all agree. The annealing by beta at fixed steps.
    """
    probes, _ = _loop.reference_draws(flow)
    values = jax.jit(lambda x: log_target_values(log_target, x, flow.event_shape))(probes)
    betas = " ".join(f"{float(schedule(step)):.3g}" for step in _PROBE_STEPS)
    how = objective if objective == "elbo" else f"iwae of {num_importance}"
    return f"target blake2b {_loop.digest(_loop.rounded(values))}, {how}, beta {betas}"
