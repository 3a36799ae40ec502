"""The rational-quadratic spline transformer of neural spline flows, and a standalone spline bijector.

On [-bound, bound] the map is a monotone spline of `num_bins` rational-quadratic
pieces through knots (x_k, y_k) with positive derivatives d_k; outside it is the
identity. Boundary derivatives are 1, so the map is continuously differentiable.

Raw params per element, `theta` of size 3 * num_bins - 1, are laid out as
[bin widths (num_bins), bin heights (num_bins), interior derivatives (num_bins - 1)];
`theta = 0` gives uniform bins and unit derivatives: the identity.

References: Durkan et al. (2019), Neural Spline Flows, https://arxiv.org/abs/1906.04032
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxflow.bijectors._checks import as_shape, check_event
from jaxflow.bijectors.base import Bijector
from jaxflow.bijectors.transformers import Transformer, unstack, unstack_params


def _check_config(num_bins, bound, min_bin_width, min_bin_height, min_derivative):
    if not isinstance(num_bins, (int, np.integer)) or num_bins < 1:
        raise ValueError(f"rational_quadratic_spline: num_bins must be a positive int, got {num_bins!r}.")
    if not bound > 0:
        raise ValueError(f"rational_quadratic_spline: bound must be positive, got {bound!r}.")
    for label, size in (("min_bin_width", min_bin_width), ("min_bin_height", min_bin_height)):
        if not 0 < size * num_bins < 1:
            raise ValueError(
                f"rational_quadratic_spline: {label} is a fraction of the interval [-bound, bound] and needs "
                f"0 < {label} * num_bins < 1, got {label}={size!r} with num_bins={num_bins}."
            )
    if not 0 < min_derivative < 1:
        raise ValueError(f"rational_quadratic_spline: min_derivative must lie in (0, 1), got {min_derivative!r}.")


def _knot_positions(raw_sizes, bound, min_size):
    """Knots from -bound to bound, exactly, with bins at least `min_size` of the interval apart.

    Args:
      raw_sizes: (num_bins, ...) unconstrained bin sizes, bins first.
    Returns:
      num_bins + 1 arrays (...) of increasing knot positions.
    """
    num_bins = raw_sizes.shape[0]
    largest = lax.stop_gradient(jnp.max(raw_sizes, axis=0))  # the softmax's shift
    exps = [jnp.exp(raw - largest) for raw in unstack(raw_sizes)]
    scale = (1.0 - min_size * num_bins) / functools.reduce(jnp.add, exps)
    ends = jnp.full_like(largest, bound)
    knots, covered = [-ends], 0.0  # covered: the fraction of the interval left of the next knot
    for exp in exps[:-1]:
        covered = covered + (min_size + scale * exp)
        knots.append(-bound + 2.0 * bound * covered)
    return [*knots, ends]


def _knot_lists(theta, bound, min_bin_width, min_bin_height, min_derivative):
    """`spline_knots` as three lists of num_bins + 1 arrays (...), one array per knot."""
    num_bins = (theta.shape[-1] + 1) // 3
    # Params first, split once (see `unstack`): every later operation is element-wise over (...).
    raw_widths, raw_heights, raw_derivatives = lax.split(
        jnp.moveaxis(theta, -1, 0), [num_bins, num_bins, num_bins - 1], axis=0
    )
    offset = float(np.log(np.expm1(1.0 - min_derivative)))  # softplus(0 + offset) + min_derivative = 1
    ones = jnp.ones(theta.shape[:-1], theta.dtype)
    interior = [jax.nn.softplus(raw + offset) + min_derivative for raw in unstack(raw_derivatives)]
    return (
        _knot_positions(raw_widths, bound, min_bin_width),
        _knot_positions(raw_heights, bound, min_bin_height),
        [ones, *interior, ones],
    )


def spline_knots(
    theta,
    *,
    bound: float = 3.0,
    min_bin_width: float = 1e-3,
    min_bin_height: float = 1e-3,
    min_derivative: float = 1e-3,
):
    """Knots and derivatives of the spline that raw params `theta` describe.

    Args:
      theta: (..., 3 * num_bins - 1) raw params: widths, heights, interior derivatives.
      bound, min_bin_width, min_bin_height, min_derivative: as in `rational_quadratic_spline`.
    Returns:
      `(x_knots, y_knots, derivatives)`, each (..., num_bins + 1); the end derivatives are 1.
    """
    lists = _knot_lists(theta, bound, min_bin_width, min_bin_height, min_derivative)
    return tuple(jnp.stack(values, axis=-1) for values in lists)


class _Bin(NamedTuple):
    """One spline piece: it maps [x_lo, x_lo + width] onto [y_lo, y_lo + height]."""

    x_lo: jax.Array
    width: jax.Array
    y_lo: jax.Array
    height: jax.Array
    d_lo: jax.Array  # derivative at the left knot
    d_hi: jax.Array  # derivative at the right knot

    @property
    def slope(self):
        return self.height / self.width


def _find_bin(knots, searched_side, value) -> _Bin:
    """The piece whose interval on the searched axis holds `value`.

    The piece's index is a count of the interior knots at or below `value` (so a value
    on an interior knot starts the piece to its right), and selects walk the knots by
    that index: every operation is element-wise over arrays (...), with no gather and
    no scatter in the gradient. The count is one reduction, which XLA computes once:
    were each select to compare `value` with the knots itself, XLA could compute a knot
    in two fused loops, round it differently in each, and mix two pieces.

    Args:
      knots: num_bins + 1 triples `(x, y, derivative)` of arrays (...), in increasing order.
      searched_side: 0 to search x (forward), 1 to search y (inverse).
      value: (...), within [knots[0], knots[-1]] on the searched side.
    """
    lower, upper = knots[0], knots[1]
    interior = knots[1:-1]
    if interior:
        index = jnp.sum(jnp.stack([value >= knot[searched_side] for knot in interior]), axis=0, dtype=jnp.int32)
        for count, (left, right) in enumerate(zip(interior, knots[2:]), start=1):
            past = index >= count
            lower = tuple(jnp.where(past, new, old) for new, old in zip(left, lower))
            upper = tuple(jnp.where(past, new, old) for new, old in zip(right, upper))
    (x_lo, y_lo, d_lo), (x_hi, y_hi, d_hi) = lower, upper
    return _Bin(x_lo, x_hi - x_lo, y_lo, y_hi - y_lo, d_lo, d_hi)


def _denominator(piece: _Bin, xi):
    """s + (d_lo + d_hi - 2 s) xi (1 - xi) with s = height / width: at least s / 2 > 0."""
    slope = piece.slope
    return slope + (piece.d_lo + piece.d_hi - 2.0 * slope) * xi * (1.0 - xi)


def _log_derivative(piece: _Bin, xi):
    """log dy/dx at relative position xi in [0, 1] of the piece (Durkan et al., eq. 5)."""
    slope = piece.slope
    numerator = piece.d_hi * xi**2 + 2.0 * slope * xi * (1.0 - xi) + piece.d_lo * (1.0 - xi) ** 2
    return 2.0 * jnp.log(slope) + jnp.log(numerator) - 2.0 * jnp.log(_denominator(piece, xi))


def _forward_in_bin(piece: _Bin, x):
    """y and log dy/dx for x in the piece (Durkan et al., eq. 4)."""
    slope = piece.slope
    xi = _clamp_to_unit_interval((x - piece.x_lo) / piece.width)
    y = piece.y_lo + piece.height * (slope * xi**2 + piece.d_lo * xi * (1.0 - xi)) / _denominator(piece, xi)
    return y, _log_derivative(piece, xi)


def _clamp_to_unit_interval(xi):
    """Clamps to [0, 1]; unlike `jnp.clip`, passes the whole gradient at exactly 0 and 1.

    Rounding can put xi just outside [0, 1], where the log-derivative is undefined: on a
    nearly flat piece the root of the inverse, and in either direction a knot that XLA
    computes in two fused loops and rounds differently in each (the piece chosen against
    one rounding, xi measured from the other: seen on knots, float32, raw params of 50).
    """
    return jnp.where(xi < 0.0, 0.0, jnp.where(xi > 1.0, 1.0, xi))


def _root_in_unit_interval(a, b, c):
    """The root in [0, 1] of a xi^2 + b xi + c = 0 on a monotone piece, free of cancellation.

    The piece's quadratic has c <= 0 <= a + b + c, so its discriminant is positive
    and that root is 2c / (-b - sqrt(disc)) = (-b + sqrt(disc)) / (2a). Each form
    cancels where the other does not: the first for b >= 0, the second (then a > 0)
    for b < 0. The form is chosen before dividing, so neither branch sees a zero
    denominator and the gradient of the discarded one cannot be NaN.
    """
    discriminant = b**2 - 4.0 * a * c
    # Rounding on a nearly flat piece could make it vanish; the floor keeps sqrt's gradient finite.
    sqrt_discriminant = jnp.sqrt(jnp.maximum(discriminant, jnp.finfo(discriminant.dtype).tiny))
    numerator = jnp.where(b >= 0, 2.0 * c, -b + sqrt_discriminant)
    denominator = jnp.where(b >= 0, -b - sqrt_discriminant, 2.0 * a)
    return _clamp_to_unit_interval(numerator / denominator)


def _inverse_in_bin(piece: _Bin, y):
    """x and log dx/dy for y in the piece: solves the quadratic of Durkan et al., eqs. 6-8, for xi."""
    slope = piece.slope
    shifted = y - piece.y_lo
    curvature = piece.d_lo + piece.d_hi - 2.0 * slope
    a = piece.height * (slope - piece.d_lo) + shifted * curvature
    b = piece.height * piece.d_lo - shifted * curvature
    c = -slope * shifted
    xi = _root_in_unit_interval(a, b, c)
    return piece.x_lo + xi * piece.width, -_log_derivative(piece, xi)


def _on_knots(in_bin, searched_side):
    """Lifts a piece map to `(x_knots, y_knots, derivatives, value) -> (out, log_det)`, knots as lists.

    The spline is evaluated at `value` clamped to the knots' range, so the branch that
    `jnp.where` discards stays finite and its zero cotangent cannot turn into NaN.
    """

    def apply(x_knots, y_knots, derivatives, value):
        searched = (x_knots, y_knots)[searched_side]
        lower, upper = searched[0], searched[-1]
        clamped = jnp.clip(value, lower, upper)
        knots = list(zip(x_knots, y_knots, derivatives))
        out, log_det = in_bin(_find_bin(knots, searched_side, clamped), clamped)
        inside = (value > lower) & (value < upper)  # on the ends the spline and the identity agree
        return jnp.where(inside, out, value), jnp.where(inside, log_det, 0.0)

    return apply


_forward_on_knots = _on_knots(_forward_in_bin, 0)
_inverse_on_knots = _on_knots(_inverse_in_bin, 1)


def spline_forward(knots, x):
    """`(y, log dy/dx)` of the spline through `knots`, the identity outside [-bound, bound].

    Args:
      knots: `(x_knots, y_knots, derivatives)` from `spline_knots`, each (..., num_bins + 1).
      x: (...), broadcast against the knots' leading shape.
    """
    return _forward_on_knots(*map(unstack_params, knots), x)


def spline_inverse(knots, y):
    """`(x, log dx/dy)` of the inverse of the spline through `knots`; see `spline_forward`."""
    return _inverse_on_knots(*map(unstack_params, knots), y)


def rational_quadratic_spline(
    num_bins: int = 8,
    bound: float = 3.0,
    min_bin_width: float = 1e-3,
    min_bin_height: float = 1e-3,
    min_derivative: float = 1e-3,
) -> Transformer:
    """A monotone rational-quadratic spline on [-bound, bound], the identity outside.

    Args:
      num_bins: number of spline pieces.
      bound: the spline acts on [-bound, bound] (both axes).
      min_bin_width: smallest bin width, as a fraction of the interval's length.
      min_bin_height: smallest bin height, as a fraction of the interval's length.
      min_derivative: smallest derivative at an interior knot, in (0, 1).

    Returns:
      A `Transformer` with `3 * num_bins - 1` params per element: kernels map
      `(theta (..., 3 * num_bins - 1), x (...))` to `(y, log_det)` of the broadcast shape.

    References: Durkan et al. (2019), Neural Spline Flows, https://arxiv.org/abs/1906.04032
    """
    _check_config(num_bins, bound, min_bin_width, min_bin_height, min_derivative)
    num_params = 3 * num_bins - 1

    def knots_of(theta):
        if jnp.shape(theta)[-1:] != (num_params,):
            raise ValueError(
                f"rational_quadratic_spline with {num_bins} bins needs theta of shape (..., {num_params}), "
                f"got {jnp.shape(theta)}."
            )
        return _knot_lists(theta, bound, min_bin_width, min_bin_height, min_derivative)

    def forward(theta, x):
        return _forward_on_knots(*knots_of(theta), x)

    def inverse(theta, y):
        return _inverse_on_knots(*knots_of(theta), y)

    return Transformer(num_params, forward, inverse, "rq_spline")


def spline_bijector(shape, **spline_kwargs) -> Bijector:
    """A rational-quadratic spline per element of an event of `shape`, its raw params learnt directly.

    Args:
      shape: the event shape.
      **spline_kwargs: passed to `rational_quadratic_spline` (num_bins, bound, ...).

    Params: {"theta": shape + (3 * num_bins - 1,)}, zero at init (the identity).

    References: Durkan et al. (2019), Neural Spline Flows, https://arxiv.org/abs/1906.04032
    """
    shape = as_shape(shape)
    spline = rational_quadratic_spline(**spline_kwargs)
    theta_shape = (*shape, spline.num_params)
    name = "rq_spline"

    def init(key):
        del key
        return {"theta": jnp.zeros(theta_shape)}

    def apply(kernel, params, x):
        x = check_event(name, x, shape)
        theta = params["theta"]
        if tuple(jnp.shape(theta)) != theta_shape:
            raise ValueError(f"{name}: params['theta'] should have shape {theta_shape}, got {tuple(jnp.shape(theta))}.")
        y, log_det = kernel(theta.astype(x.dtype), x)
        return y, jnp.sum(log_det)

    def forward(params, x, context=None):
        del context
        return apply(spline.forward, params, x)

    def inverse(params, y, context=None):
        del context
        return apply(spline.inverse, params, y)

    return Bijector(init, forward, inverse, name)
