"""Dequantisation: continuous flows as models of integer data, and the bound they give.

Integer data x in {0, ..., L - 1}^D are lifted to y = (x + u) / L in [0, 1]^D with
noise u in [0, 1)^D. A density p on [0, 1]^D defines the discrete model

    P(x) = integral over the cell of x of p(y) dy = E_{u ~ U[0,1)^D}[p((x + u) / L)] / L^D,

the L^-D being the Jacobian of u -> y = (x + u) / L. For any noise density q(u | x)
on [0, 1)^D, importance sampling and Jensen's inequality give the bound

    log P(x) >= E_{u ~ q(.|x)}[log p((x + u) / L) - log q(u | x)] - D log L,

equal to log P(x) exactly when q(u | x) is p((x + u) / L) normalised over the cell.

- Uniform dequantisation (RealNVP, Glow): q = U[0, 1)^D, so log q = 0 and the bound is
  the mean of log p((x + u) / L) - D log L. It is exact when p is constant on each cell.
- Variational dequantisation (Flow++): q(u | x) is a conditional flow whose samples are
  squashed into (0, 1) by a sigmoid; `Flow.sample_and_log_prob` returns log q(u | x)
  with the sigmoid's log-Jacobian included, and the bound is maximised jointly in
  the model's and the noise flow's params by the reparametrisation trick.

`bits_per_dim` converts the bound (a log-likelihood of the integer data, in nats)
into the bits per dimension reported for image models.

References: Theis et al. (2015), A note on the evaluation of generative models,
https://arxiv.org/abs/1511.01844; Ho et al. (2019), Flow++, https://arxiv.org/abs/1902.00275
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxflow.bijectors._checks import is_positive_int
from jaxflow.bijectors.base import chain
from jaxflow.bijectors.elementwise import sigmoid
from jaxflow.distributions import Flow

NOISE_FLOW_NAME = "dequantization_noise"  # the bijector name that marks a noise flow confined to (0, 1)^D


def uniform_dequantize(key, x, num_levels: int, dtype=None):
    """(x + u) / num_levels with u ~ U[0, 1) of x's shape: integer data lifted into [0, 1).

    Each value stays in its cell [x / L, (x + 1) / L) after rounding; a dtype too coarse for
    L cells (bfloat16 or float16 at L = 256) is refused.

    Args:
      key: PRNG key.
      x: integer array with values in [0, num_levels) (checked on concrete data, not under `jit`).
      num_levels: L, the number of values each entry takes (256 for 8-bit images).
      dtype: float dtype of the result; the default float dtype if None.
    """
    x = _check_integer_data("uniform_dequantize", x, num_levels)
    dtype = jnp.result_type(float) if dtype is None else dtype
    return _lift(x, jax.random.uniform(key, x.shape, dtype), num_levels)


def variational_dequantization(flow_for_noise: Flow) -> Flow:
    """The noise flow q(u | x) on (0, 1)^D: `flow_for_noise`'s samples pushed through a sigmoid.

    Args:
      flow_for_noise: a conditional `Flow` over R^D (D the data's event shape), whose
        context has the data's event shape: it receives `noise_context(x, L)`.

    Returns:
      A conditional `Flow` over (0, 1)^D; initialise it with its own `init` (its bijector
      is `chain(flow_for_noise.bijector, sigmoid)`, so its params nest one level deeper).
    """
    if flow_for_noise.context_shape != flow_for_noise.event_shape:
        raise ValueError(
            "variational_dequantization: the noise flow q(u | x) is conditioned on the data x, so its "
            f"context_shape must equal its event_shape {flow_for_noise.event_shape}, "
            f"got {flow_for_noise.context_shape}."
        )
    squash = sigmoid(flow_for_noise.event_shape)
    return flow_for_noise._replace(bijector=chain(flow_for_noise.bijector, squash, name=NOISE_FLOW_NAME))


def noise_context(x, num_levels: int):
    """The context the noise flow sees: the cell centres (x + 1/2) / L rescaled into (-1, 1)."""
    x = _check_integer_data("noise_context", x, num_levels)
    return (2 * x.astype(jnp.result_type(float)) + 1) / num_levels - 1


def uniform_dequantized_log_likelihood_bound(
    key, model_flow: Flow, model_params, x_int, num_levels: int, num_samples: int = 1, *, context=None
):
    """Monte Carlo estimate of E_{u ~ U[0,1)^D}[log p((x + u) / L)] - D log L <= log P(x).

    Args:
      key: PRNG key, for the noise and for a stochastic model log-det.
      model_flow: a `Flow` whose density p lives on [0, 1]^D.
      model_params: its params.
      x_int: integer data of shape (*batch, *event_shape), values in [0, L) (checked on
        concrete data; under `jit`, other values give meaningless bounds).
      num_levels: L.
      num_samples: noise draws per data point.
      context: for a conditional model flow (e.g. a class-conditional Glow), one context
        shared by all of `x_int` or one per row, of shape (*batch, *context_shape).

    Returns:
      The bound in nats, of shape `batch`.
    """
    name = "uniform_dequantized_log_likelihood_bound"
    x_int, sample_shape = _prepare(name, model_flow, x_int, num_levels, num_samples)
    context = _model_context(name, model_flow, context, sample_shape)
    noise_key, log_det_key = _noise_and_log_det_keys(model_flow, key)
    u = jax.random.uniform(noise_key, sample_shape + model_flow.event_shape, jnp.result_type(float))
    log_q = jnp.zeros(sample_shape, u.dtype)
    return _bound(model_flow, model_params, x_int, num_levels, u, log_q, context, log_det_key)


def dequantized_log_likelihood_bound(
    key, model_flow: Flow, model_params, noise_flow: Flow, noise_params, x_int, num_levels: int, num_samples: int = 1,
    *, context=None,
):
    """Monte Carlo estimate of E_q[log p((x + u) / L) - log q(u | x)] - D log L <= log P(x).

    Differentiable in `model_params` and `noise_params` (reparametrised noise samples):
    maximise its mean to fit both flows.

    Args:
      key: PRNG key, for the noise and for a stochastic model log-det.
      model_flow: a `Flow` whose density p lives on [0, 1]^D.
      model_params: its params.
      noise_flow: q(u | x), a conditional flow on (0, 1)^D from `variational_dequantization`,
        given `noise_context(x_int, num_levels)` as context.
      noise_params: its params.
      x_int: integer data of shape (*batch, *event_shape), values in [0, L) (checked on
        concrete data; under `jit`, other values give meaningless bounds).
      num_levels: L.
      num_samples: noise draws per data point.
      context: for a conditional model flow (e.g. a class-conditional Glow), one context
        shared by all of `x_int` or one per row, of shape (*batch, *context_shape).

    Returns:
      The bound in nats, of shape `batch`.
    """
    name = "dequantized_log_likelihood_bound"
    x_int, sample_shape = _prepare(name, model_flow, x_int, num_levels, num_samples)
    model_context = _model_context(name, model_flow, context, sample_shape)
    if noise_flow.event_shape != model_flow.event_shape or noise_flow.context_shape != model_flow.event_shape:
        raise ValueError(
            f"{name}: the noise flow must have event and context shape {model_flow.event_shape} (the data's), "
            f"got event shape {noise_flow.event_shape} and context shape {noise_flow.context_shape}."
        )
    if noise_flow.bijector.name != NOISE_FLOW_NAME:
        raise ValueError(
            f"{name}: the noise flow must draw u in (0, 1)^D, or the result is no bound on log P(x): build it with "
            f"variational_dequantization(flow), which ends it in a sigmoid; got a flow whose bijector is "
            f"{noise_flow.bijector.name!r}."
        )
    noise_flow_context = jnp.broadcast_to(noise_context(x_int, num_levels), sample_shape + model_flow.event_shape)
    noise_key, log_det_key = _noise_and_log_det_keys(model_flow, key)
    u, log_q = noise_flow.sample_and_log_prob(noise_params, noise_key, sample_shape, noise_flow_context)
    return _bound(model_flow, model_params, x_int, num_levels, u, log_q, model_context, log_det_key)


def bits_per_dim(log_likelihood, num_dims: int):
    """-log_likelihood / (D log 2): a log-likelihood of discrete data in nats as bits per dimension."""
    if not is_positive_int(num_dims):
        raise ValueError(f"bits_per_dim: num_dims must be a positive int, got {num_dims!r}.")
    return -jnp.asarray(log_likelihood) / (num_dims * math.log(2.0))


def _lift(x, u, num_levels):
    """(x + u) / L, kept in x's cell [x / L, (x + 1) / L): rounding takes x + u to x + 1 for u close enough to 1."""
    dtype = u.dtype
    if jnp.finfo(dtype).eps * num_levels > 1 / 16:  # fewer than 32 floats in the cells just below 1
        raise ValueError(
            f"dequantization: {jnp.dtype(dtype).name} cannot resolve {num_levels} levels (cells of width "
            f"1/{num_levels} hold too few of its values to draw noise in); use float32."
        )
    x = x.astype(dtype)
    low, high = x / num_levels, jnp.nextafter((x + 1) / num_levels, jnp.zeros((), dtype))
    return jnp.clip((x + u) / num_levels, low, high)


def _noise_and_log_det_keys(model_flow, key):
    """`key` split in two if the model estimates its log-det stochastically (a residual flow), else (key, None)."""
    if model_flow.bijector.stochastic:
        return tuple(jax.random.split(key))
    return key, None


def _bound(model_flow, model_params, x_int, num_levels, u, log_q, context, log_det_key):
    """Averages log p((x + u) / L) - log q over the leading sample axis and adds -D log L."""
    log_p = model_flow.log_prob(model_params, _lift(x_int, u, num_levels), context, key=log_det_key)
    num_dims = math.prod(model_flow.event_shape)
    return jnp.mean(log_p - log_q, axis=0) - num_dims * math.log(num_levels)


def _prepare(name, model_flow, x_int, num_levels, num_samples):
    """Checks the arguments; returns x_int as an array and the (num_samples, *batch) sample shape."""
    x_int = _check_integer_data(name, x_int, num_levels)
    if not is_positive_int(num_samples):
        raise ValueError(f"{name}: num_samples must be a positive int, got {num_samples!r}.")
    event = model_flow.event_shape
    if x_int.ndim < len(event) or x_int.shape[x_int.ndim - len(event):] != event:
        raise ValueError(f"{name}: expected integer data with trailing event shape {event}, got shape {x_int.shape}.")
    return x_int, (int(num_samples), *x_int.shape[: x_int.ndim - len(event)])


def _model_context(name, model_flow, context, sample_shape):
    """A conditional model's context broadcast over the noise draws: (*sample_shape, *context_shape)."""
    context, context_batch = model_flow._checked_context(context, name)
    if context_batch is None:
        return None
    if context_batch and context_batch != sample_shape[1:]:
        raise ValueError(
            f"{name}: pass one context shared by all of x_int, or one per row, of batch shape {sample_shape[1:]}; "
            f"got a context of batch shape {context_batch}."
        )
    return jnp.broadcast_to(context, sample_shape + model_flow.context_shape)


def _check_integer_data(name, x, num_levels):
    if not is_positive_int(num_levels):
        raise ValueError(f"{name}: num_levels must be a positive int, got {num_levels!r}.")
    # Concrete data is checked on the host as given: jnp.asarray would first narrow int64 to
    # int32 without jax_enable_x64, wrapping 2**32 + 3 to 3.
    values = x if isinstance(x, jax.core.Tracer) else np.asarray(x)
    if not jnp.issubdtype(values.dtype, jnp.integer):
        raise TypeError(f"{name}: expected integer data in [0, {num_levels}), got dtype {values.dtype}.")
    if isinstance(values, np.ndarray) and values.size and (values.min() < 0 or values.max() >= num_levels):
        raise ValueError(f"{name}: data must lie in [0, {num_levels}), got values in [{values.min()}, {values.max()}].")
    return jnp.asarray(x)
