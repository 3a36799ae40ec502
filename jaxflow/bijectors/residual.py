"""Contractive residual flows: invertible residual networks (i-ResNet) and Residual Flows.

A block maps data x to base z by the explicit residual map

    z = x + g(x),      Lip(g) <= lipschitz < 1,

where g is an MLP with 1-Lipschitz activations whose kernels are spectrally normalised
(`spectral_norm.normalise`) to lipschitz^(1/L) each, L the number of layers, so that
Lip(g) <= lipschitz for every value of the params (the papers bound each layer by the
coefficient instead, which makes Lip(g) <= coefficient^L).

Direction: both papers fit densities, evaluating the explicit map on data and inverting
it only to sample. jaxflow's `inverse` is the data -> base (density) direction, so it is
the explicit map, and `forward` (base -> data, sampling) solves x + g(x) = z by the
fixed-point iteration x <- z - g(x), a contraction with rate Lip(g). Its derivatives
follow from the implicit function theorem, with the linear solves (I + J_g) v = b also done by
fixed-point iteration. Use `invert` to make sampling the explicit direction instead.

The log-det, log det(I + J_g(x)), is always evaluated at the data-side point x, so
`forward` and `inverse` with one key give exactly opposite values. `log_det` selects:

- "exact": slogdet of the dense Jacobian (dim jvps; for small dim). Deterministic.
- "series": the first n terms of sum_k (-1)^(k+1) tr(J^k) / k, each trace estimated by
  Hutchinson's v^T J^k v with Rademacher probes v, from k vector-Jacobian products.
  Biased by at most dim * q^(n+1) / ((n+1)(1-q)), q = ||J_g(x)||_2 <= lipschitz.
- "russian_roulette": the same n terms plus a random tail: N = n + M terms with
  M ~ Geometric(p) on {0, 1, ...}, term k weighted by 1 / P(N >= k), which makes the
  estimate unbiased (Chen et al. 2019). Its variance is finite where q^2 < 1 - p, q the
  block's actual Jacobian norm at x; `lipschitz` only bounds q, so p < 1 - lipschitz^2
  guarantees it for all x and params. The defaults (lipschitz 0.97, p = 0.5, on average
  (1 - p) / p = 1 extra term) favour speed and do not: that bound would need p < 0.059,
  about 16 extra terms on average.

Both estimators return the value of the estimate with the gradient of the Neumann series
d log det(I + J) = tr((I + J)^-1 dJ) = sum_k (-1)^k tr(J^k dJ) (Chen et al. 2019, eq. 8),
estimated with the same probes and terms as w^T dJ v, w = sum_{k<N} (-1)^k (J^T)^k v /
P(N > k). w is computed outside autodiff, so memory does not grow with the number of terms;
only first derivatives are right (the value carries the Neumann gradient, not its own).

References: Behrmann et al. (2019), Invertible Residual Networks,
https://arxiv.org/abs/1811.00995; Chen et al. (2019), Residual Flows for Invertible
Generative Modeling, https://arxiv.org/abs/1906.02735
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxflow.bijectors import spectral_norm
from jaxflow.bijectors._checks import (
    cast_params,
    check_context,
    check_context_dim,
    check_event,
    check_hidden,
    is_positive_int,
)
from jaxflow.bijectors._numerics import norm
from jaxflow.bijectors.base import Bijector
from jaxflow.bijectors.transformers import softplus_inverse

ACTIVATIONS = ("lipswish", "elu", "tanh")
LOG_DETS = ("exact", "series", "russian_roulette")
DEFAULT_NUM_SERIES_TERMS = {"series": 8, "russian_roulette": 2}
DEFAULT_STOP_PROBABILITY = 0.5
# The estimator options each log_det reads; `residual` refuses the others.
_OPTIONS_READ = {
    "exact": (),
    "series": ("num_series_terms", "num_hutchinson_samples"),
    "russian_roulette": ("num_series_terms", "num_hutchinson_samples", "roulette_stop_probability"),
}
_LIPSWISH_SLOPE_BOUND = 1.1  # max_t d/dt [t sigmoid(t)] = 1.0998...


class ContractiveMLP(nn.Module):
    """g(x, context): dense layers with 1-Lipschitz activations; the last layer starts at zero.

    The module itself does not normalise: `contract` maps its params to spectrally
    normalised ones once per call, outside any loop. The context enters the first layer
    through its own kernel ("context"), which is not normalised: Lip(g) in x is unaffected.
    """

    hidden: tuple[int, ...]
    dim: int
    activation: str = "lipswish"

    @nn.compact
    def __call__(self, x, context=None):
        widths = (*self.hidden, self.dim)
        h = x
        for i, width in enumerate(widths):
            if i > 0:
                h = self._activate(h, i - 1)
            last = i == len(widths) - 1
            kernel_init = nn.initializers.zeros if last else nn.initializers.lecun_normal()
            h = nn.Dense(width, kernel_init=kernel_init, name=f"dense_{i}")(h)
            if i == 0 and context is not None:
                h = h + nn.Dense(width, use_bias=False, name="context")(context)
        return h

    def _activate(self, h, index):
        if self.activation == "lipswish":  # swish(beta t) / 1.1 with beta > 0 per unit (Chen et al. 2019)
            raw_beta = self.param(f"lipswish_{index}", nn.initializers.constant(softplus_inverse(1.0)), h.shape)
            return h * jax.nn.sigmoid(jax.nn.softplus(raw_beta) * h) / _LIPSWISH_SLOPE_BOUND
        return {"elu": jax.nn.elu, "tanh": jnp.tanh}[self.activation](h)


def contract(variables, *, num_layers: int, lipschitz: float):
    """Normalises the kernels `dense_0` .. `dense_{L-1}` of `ContractiveMLP` params to lipschitz^(1/L)."""
    layers = dict(variables["params"])
    coefficient = lipschitz ** (1 / num_layers)
    for i in range(num_layers):
        layer = layers[f"dense_{i}"]
        layers[f"dense_{i}"] = {**layer, "kernel": spectral_norm.normalise(layer["kernel"], coefficient=coefficient)}
    return {**variables, "params": layers}


STALL_STEPS = 4  # steps without a new smallest move after which `fixed_point` takes rounding to dominate
ROUNDING_MOVES = 2  # moves below this many eps |x| are rounding: `fixed_point` stops there whatever the rate


def fixed_point(step, start, *, rate: float, tol: float, max_iter: int):
    """Iterates x <- step(x) from `start` for a contraction `step` of Lipschitz constant <= `rate` < 1.

    A move by m at an observed contraction q (this move over the last, at most `rate`)
    leaves x within about m q / (1 - q) of the fixed point, so the iteration stops once a
    move is at most tol (1 - q) |x|: x is then within about tol |x|, also near the critical
    rate, where the moves shrink slowly; or once a move is within `ROUNDING_MOVES` eps |x|,
    which rounding cannot resolve further. It also stops once no move has been the smallest
    yet for `STALL_STEPS` steps (moves that round to equal sizes are not taken for a stall at
    once: the error may still be shrinking), and after `max_iter` steps in any case.
    """

    def keep_going(state):
        x, moved, previous, _, since_smallest, iteration = state
        contraction = jnp.clip(moved / previous, 0.0, rate)
        resolvable = jnp.maximum(tol * (1 - contraction), ROUNDING_MOVES * jnp.finfo(x.dtype).eps)
        converged = moved <= resolvable * norm(x)
        return (iteration < max_iter) & ~converged & (since_smallest < STALL_STEPS)

    def body(state):
        x, moved, _, smallest, since_smallest, iteration = state
        new = step(x)
        new_moved = norm(new - x)
        since_smallest = jnp.where(new_moved < smallest, 0, since_smallest + 1)
        return new, new_moved, moved, jnp.minimum(new_moved, smallest), since_smallest, iteration + 1

    dtype = jnp.result_type(start)
    large = jnp.asarray(jnp.finfo(dtype).max, dtype)
    state = (start, large, large, large, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))
    return jax.lax.while_loop(keep_going, body, state)[0]


def solve_residual(g, z, *, lipschitz: float, tol: float, max_iter: int):
    """The x with x + g(x) = z, for Lip(g) <= lipschitz < 1; differentiable by the implicit function theorem."""

    def residual(x):
        return x + g(x) - z

    def solve(residual, guess):
        return fixed_point(lambda x: x - residual(x), guess, rate=lipschitz, tol=tol, max_iter=max_iter)

    def neumann_solve(matvec, b):  # (I + A) v = b as v <- b - A v, with ||A|| = ||J_g|| < 1 (A = J_g or J_g^T)
        return fixed_point(lambda v: v - matvec(v) + b, b, rate=lipschitz, tol=tol, max_iter=max_iter)

    def tangent_solve(linearised, rhs):
        return jax.lax.custom_linear_solve(linearised, rhs, neumann_solve, neumann_solve)

    return jax.lax.custom_root(residual, z, solve, tangent_solve)


def exact_log_det(g, inputs, x, key=None):
    """log det(I + J_g(x)) from the dense Jacobian of `g(inputs, x)` with respect to x."""
    del key
    jacobian = jax.jacfwd(lambda v: g(inputs, v))(x)
    return jnp.linalg.slogdet(jnp.eye(x.size, dtype=jacobian.dtype) + jacobian)[1]


def power_series_log_det(g, inputs, x, key, *, num_terms: int, stop_probability: float = 0.0, num_probes: int = 1):
    """Estimates log det(I + J_g(x)) by the power series with Hutchinson probes (module docstring).

    Args:
      g: `(inputs, x) -> g(x)` of shape (dim,), with Lip(g) < 1 in x.
      inputs: pytree g depends on (params, context); gradients flow to it and to x.
      x: the point, shape (dim,).
      key: PRNG key for the probes and the truncation.
      num_terms: terms always summed.
      stop_probability: p of the geometric tail; 0 truncates after `num_terms` (biased).
      num_probes: Hutchinson probes averaged.

    Returns:
      A scalar estimate whose gradient is the Neumann-series estimate of the log-det's.
    """
    probe_key, length_key = jax.random.split(key)
    probes = jax.random.rademacher(probe_key, (num_probes, *x.shape), x.dtype)
    length = num_terms
    if stop_probability > 0:
        length = num_terms + jax.random.geometric(length_key, stop_probability) - 1
    frozen_inputs, frozen_x = jax.tree.map(jax.lax.stop_gradient, (inputs, x))
    _, vjp = jax.vjp(lambda v: g(frozen_inputs, v), frozen_x)
    series = functools.partial(_series, lambda u: vjp(u)[0], length=length, num_terms=num_terms, p=stop_probability)
    values, neumann = jax.vmap(series)(probes)
    jacobian_probes = jax.vmap(lambda v: jax.jvp(lambda y: g(inputs, y), (x,), (v,))[1])(probes)
    surrogate = jnp.mean(jnp.sum(neumann * jacobian_probes, axis=-1))  # gradient: w^T dJ v
    return jax.lax.stop_gradient(jnp.mean(values)) + surrogate - jax.lax.stop_gradient(surrogate)


def _series(vjp, probe, *, length, num_terms, p):
    """(sum_{k<=N} s_k v^T J^k v / k, sum_{k<=N} s_k (J^T)^(k-1) v), s_k = (-1)^(k+1) / P(N >= k)."""
    log_continue = math.log1p(-p)

    def term(k, state):
        power, value, neumann = state  # power = (J^T)^(k-1) v
        sign = jnp.where(k % 2 == 1, 1.0, -1.0)
        weight = (sign * jnp.exp(-log_continue * jnp.maximum(k - num_terms, 0))).astype(probe.dtype)
        neumann = neumann + weight * power
        power = vjp(power)
        return power, value + weight / k * jnp.vdot(power, probe), neumann

    state = (probe, jnp.zeros((), probe.dtype), jnp.zeros_like(probe))
    _, value, neumann = jax.lax.fori_loop(1, length + 1, term, state)
    return value, neumann


def residual(
    dim: int,
    *,
    hidden: Sequence[int] = (64, 64),
    activation: str = "lipswish",
    lipschitz: float = 0.97,
    log_det: str = "exact",
    num_series_terms: int | None = None,
    num_hutchinson_samples: int | None = None,
    roulette_stop_probability: float | None = None,
    fixed_point_tol: float | None = None,
    fixed_point_max_iter: int | None = None,
    context_dim: int | None = None,
) -> Bijector:
    """A contractive residual block on vectors: `inverse(x) = x + g(x)`, `forward` by fixed point.

    Args:
      dim: event size.
      hidden: widths of g's hidden layers.
      activation: "lipswish", "elu" or "tanh" (all 1-Lipschitz).
      lipschitz: bound on Lip(g), in (0, 1).
      log_det: "exact", "series" or "russian_roulette" (module docstring); the last two
        are stochastic and take `key=` in forward and inverse.
      num_series_terms: terms always summed by the power series (default 8 for "series",
        2 for "russian_roulette").
      num_hutchinson_samples: Hutchinson probes per estimate (default 1).
      roulette_stop_probability: p of the geometric number of extra terms ((1 - p) / p on
        average; default 0.5). The estimate's variance is finite where ||J_g(x)||_2^2 < 1 - p,
        and for every x and params when p < 1 - lipschitz^2; the default 0.5 favours speed
        and does not guarantee it once lipschitz^2 >= 0.5 (as at the default lipschitz).
        These three options are refused where `log_det` does not use them: all of them
        for "exact", the last for "series".
      fixed_point_tol: relative error at which `forward`'s iteration stops (default 4 eps of
        the input's dtype; it also stops when rounding stops its progress: see `fixed_point`).
      fixed_point_max_iter: iteration cap (default: twice the steps in which a contraction
        of rate `lipschitz` shrinks an error by eps of the input's dtype).
      context_dim: size of the context for a conditional block (fed to g's first layer).

    Returns:
      A `Bijector` whose params are `ContractiveMLP`'s flax variables: {"params": {"dense_i":
      {"kernel", "bias"}, "lipswish_i" (per-unit raw beta), "context": {"kernel"}}}.
    """
    estimator_counts = {"num_series_terms": num_series_terms, "num_hutchinson_samples": num_hutchinson_samples}
    _check_arguments(
        {"dim": dim}, estimator_counts | {"fixed_point_max_iter": fixed_point_max_iter},
        activation, lipschitz, log_det, roulette_stop_probability, fixed_point_tol,
    )
    _refuse_unused(log_det, estimator_counts | {"roulette_stop_probability": roulette_stop_probability})
    hidden, context_dim = check_hidden("residual", hidden), check_context_dim("residual", context_dim)
    name = f"residual({log_det})"
    module = ContractiveMLP(hidden, dim, activation)
    context_shape = None if context_dim is None else (context_dim,)
    contract_params = functools.partial(contract, num_layers=len(hidden) + 1, lipschitz=lipschitz)
    if log_det == "exact":
        estimate = exact_log_det
    else:
        estimate = functools.partial(
            power_series_log_det,
            num_terms=num_series_terms or DEFAULT_NUM_SERIES_TERMS[log_det],
            stop_probability=0.0 if log_det == "series" else roulette_stop_probability or DEFAULT_STOP_PROBABILITY,
            num_probes=num_hutchinson_samples or 1,
        )

    def init(key):
        return module.init(key, jnp.zeros(dim), None if context_shape is None else jnp.zeros(context_shape))

    def g(inputs, x):
        params, context = inputs
        return module.apply(params, x, context)

    def prepare(params, event, context, key, what):
        if log_det != "exact" and key is None:
            raise ValueError(f"{name} estimates its log-det stochastically: pass key=... (or use log_det='exact').")
        event = check_event(name, event, (dim,), what)
        context = check_context(name, context, context_shape)
        params, context = cast_params((params, context), event.dtype)  # normalised in the event's precision
        return event, (contract_params(params), context)

    def to_base(params, x, context, key):
        x, inputs = prepare(params, x, context, key, "data-side input")
        return x + g(inputs, x), estimate(g, inputs, x, key)

    def to_data(params, z, context, key):
        z, inputs = prepare(params, z, context, key, "base-side input")
        eps = float(jnp.finfo(z.dtype).eps)
        tol = 4 * eps if fixed_point_tol is None else fixed_point_tol
        max_iter = fixed_point_max_iter or 2 * math.ceil(math.log(eps) / math.log(lipschitz))
        x = solve_residual(functools.partial(g, inputs), z, lipschitz=lipschitz, tol=tol, max_iter=max_iter)
        return x, -estimate(g, inputs, x, key)

    if log_det == "exact":
        forward = lambda p, z, context=None: to_data(p, z, context, None)  # noqa: E731
        inverse = lambda p, x, context=None: to_base(p, x, context, None)  # noqa: E731
        return Bijector(init, forward, inverse, name)
    return Bijector(
        init,
        lambda p, z, context=None, *, key=None: to_data(p, z, context, key),
        lambda p, x, context=None, *, key=None: to_base(p, x, context, key),
        name,
        stochastic=True,
    )


def _check_arguments(counts, optional_counts, activation, lipschitz, log_det, stop_probability, tol):
    """Raises ValueError for arguments `residual` cannot build a contractive block from."""

    for label, value in counts.items():
        if not is_positive_int(value):
            raise ValueError(f"residual: {label} must be a positive int, got {value!r}.")
    for label, value in optional_counts.items():
        if value is not None and not is_positive_int(value):
            raise ValueError(f"residual: {label} must be a positive int or None, got {value!r}.")
    if activation not in ACTIVATIONS:
        raise ValueError(f"residual: activation must be one of {ACTIVATIONS} (1-Lipschitz), got {activation!r}.")
    if log_det not in LOG_DETS:
        raise ValueError(f"residual: log_det must be one of {LOG_DETS}, got {log_det!r}.")
    if not 0 < lipschitz < 1:
        raise ValueError(f"residual: lipschitz must lie in (0, 1) for the block to be invertible, got {lipschitz}.")
    if stop_probability is not None and not 0 < stop_probability < 1:
        raise ValueError(f"residual: roulette_stop_probability must lie in (0, 1), got {stop_probability}.")
    if tol is not None and not tol > 0:
        raise ValueError(f"residual: fixed_point_tol must be > 0 or None, got {tol}.")


def _refuse_unused(log_det, options: dict) -> None:
    """ValueError for an estimator option set (not None) that `log_det` would ignore."""
    unused = [name for name, value in options.items() if value is not None and name not in _OPTIONS_READ[log_det]]
    if unused:
        raise ValueError(
            f"residual: log_det={log_det!r} does not use {', '.join(unused)}; leave "
            f"{'it' if len(unused) == 1 else 'them'} unset, or choose a log_det that does "
            f"({', '.join(k for k, v in _OPTIONS_READ.items() if unused[0] in v)})."
        )
