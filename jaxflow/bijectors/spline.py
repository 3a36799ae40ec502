"""The rational-quadratic spline transformer of neural spline flows, and a standalone spline bijector.

On [-bound, bound] the map is a monotone spline of `num_bins` rational-quadratic
pieces through knots (x_k, y_k) with positive derivatives d_k; outside it is the
identity. Boundary derivatives are 1, so the map is continuously differentiable.

Raw params per element, `theta` of size 3 * num_bins - 1, are laid out as
[bin widths (num_bins), bin heights (num_bins), interior derivatives (num_bins - 1)];
`theta = 0` gives uniform bins and unit derivatives: the identity.

Through raw params the spline's derivatives are written out in closed form (a custom JVP,
see `_spline_of_params`), which keeps its compiled gradient small; forward mode, reverse
mode and higher derivatives all use them.

References: Durkan et al. (2019), Neural Spline Flows, https://arxiv.org/abs/1906.04032
"""

from __future__ import annotations

import functools
import itertools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxflow.bijectors._checks import as_shape, check_event, is_positive_int
from jaxflow.bijectors.base import Bijector
from jaxflow.bijectors.transformers import Transformer, softplus_inverse, unstack, unstack_params


def _check_config(num_bins, bound, min_bin_width, min_bin_height, min_derivative):
    if not is_positive_int(num_bins):
        raise ValueError(f"rational_quadratic_spline: num_bins must be a positive int, got {num_bins!r}.")
    if not 0 < bound < float("inf"):
        raise ValueError(f"rational_quadratic_spline: bound must be positive and finite, got {bound!r}.")
    for label, size in (("min_bin_width", min_bin_width), ("min_bin_height", min_bin_height)):
        if not 0 < size * num_bins < 1:
            raise ValueError(
                f"rational_quadratic_spline: {label} is a fraction of the interval [-bound, bound] and needs "
                f"0 < {label} * num_bins < 1, got {label}={size!r} with num_bins={num_bins}."
            )
    if not 0 < min_derivative < 1:
        raise ValueError(f"rational_quadratic_spline: min_derivative must lie in (0, 1), got {min_derivative!r}.")


class _Config(NamedTuple):
    """A spline's settings, as `rational_quadratic_spline` takes them."""

    bound: float
    min_bin_width: float
    min_bin_height: float
    min_derivative: float


def _knot_positions(raw_sizes, bound, min_size):
    """Knots from -bound to bound, exactly, with bins at least `min_size` of the interval apart.

    Args:
      raw_sizes: (num_bins, ...) unconstrained bin sizes, bins first.
    Returns:
      num_bins + 1 arrays (...) of increasing knot positions, and the softmax of `raw_sizes`
      (num_bins, ...), which only derivatives read.
    """
    num_bins = raw_sizes.shape[0]
    shift = lax.stop_gradient(jnp.max(raw_sizes, axis=0))
    # One exponential for all bins: one per bin made a kernel each (XLA gives an exponential
    # read by several loops a loop of its own), 14 copies of a vectorised exp that took 53k of
    # the 85k lines of LLVM IR in an NSF training step (dim 64) and 0.8 s of its compile time.
    exps = jnp.exp(raw_sizes - shift)
    per_bin = unstack(exps)
    normaliser = 1.0 / functools.reduce(jnp.add, per_bin)
    scale = (1.0 - min_size * num_bins) * normaliser
    ends = jnp.full_like(shift, bound)
    knots, covered = [-ends], 0.0  # covered: the fraction of the interval left of the next knot
    for exp in per_bin[:-1]:
        covered = covered + (min_size + scale * exp)
        knots.append(-bound + 2.0 * bound * covered)
    return [*knots, ends], exps * normaliser


def _split_rows(raw):
    """Raw params (3 * num_bins - 1, ...), params first, as widths (num_bins, ...), heights
    (num_bins, ...) and interior derivatives (num_bins - 1, ...): one split (see `unstack`)."""
    num_bins = (raw.shape[0] + 1) // 3
    return lax.split(raw, [num_bins, num_bins, num_bins - 1], axis=0)


def _knot_lists(raw_widths, raw_heights, raw_derivatives, config):
    """The knots of `spline_knots` as three lists of num_bins + 1 arrays (...), one array per knot."""
    offset = softplus_inverse(1.0 - config.min_derivative)  # raw 0: derivative 1
    ones = jnp.ones(raw_derivatives.shape[1:], raw_derivatives.dtype)
    interior = [jax.nn.softplus(raw + offset) + config.min_derivative for raw in unstack(raw_derivatives)]
    x_knots, width_probabilities = _knot_positions(raw_widths, config.bound, config.min_bin_width)
    y_knots, height_probabilities = _knot_positions(raw_heights, config.bound, config.min_bin_height)
    return (x_knots, y_knots, [ones, *interior, ones]), (width_probabilities, height_probabilities)


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
    config = _Config(bound, min_bin_width, min_bin_height, min_derivative)
    lists, _ = _knot_lists(*_split_rows(jnp.moveaxis(theta, -1, 0)), config)
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


def _bin_index(knots, value):
    """How many interior `knots` (num_bins + 1 arrays (...)) lie at or below `value` (...):
    the index of the piece holding it, a value on an interior knot starting the piece to its right.

    The count is one reduction, which XLA computes once: were each select of `_select_bin`
    to compare `value` with the knots itself, XLA could compute a knot in two fused loops,
    round it differently in each, and mix two pieces.
    """
    interior = knots[1:-1]
    if not interior:
        return jnp.zeros(jnp.shape(value), jnp.int32)
    return jnp.sum(jnp.stack([value >= knot for knot in interior]), axis=0, dtype=jnp.int32)


def _select_bin(knots, index) -> _Bin:
    """Piece `index` (...) of the spline through `knots`, num_bins + 1 triples `(x, y, derivative)`
    of arrays (...): selects walk the knots, element-wise, with no gather and no scatter."""
    lower, upper = knots[0], knots[1]
    for count, (left, right) in enumerate(itertools.pairwise(knots[1:]), start=1):
        past = index >= count
        lower = tuple(jnp.where(past, new, old) for new, old in zip(left, lower))
        upper = tuple(jnp.where(past, new, old) for new, old in zip(right, upper))
    (x_lo, y_lo, d_lo), (x_hi, y_hi, d_hi) = lower, upper
    return _Bin(x_lo, x_hi - x_lo, y_lo, y_hi - y_lo, d_lo, d_hi)


def _find_bin(knots, searched_side, value) -> _Bin:
    """The piece whose interval on the searched axis (0: x, forward; 1: y, inverse) holds `value` (...)."""
    return _select_bin(knots, _bin_index([knot[searched_side] for knot in knots], value))


def _denominator(piece: _Bin, xi):
    """s + (d_lo + d_hi - 2 s) xi (1 - xi) with s = height / width: at least s / 2 > 0."""
    slope = piece.slope
    return slope + (piece.d_lo + piece.d_hi - 2.0 * slope) * xi * (1.0 - xi)


def _derivative_numerator(piece: _Bin, xi):
    """d_hi xi^2 + 2 s xi (1 - xi) + d_lo (1 - xi)^2: dy/dx is s^2 times this over the denominator squared."""
    return piece.d_hi * xi**2 + 2.0 * piece.slope * xi * (1.0 - xi) + piece.d_lo * (1.0 - xi) ** 2


def _log_derivative(piece: _Bin, xi):
    """log dy/dx at relative position xi in [0, 1] of the piece (Durkan et al., eq. 5)."""
    return (
        2.0 * jnp.log(piece.slope) + jnp.log(_derivative_numerator(piece, xi)) - 2.0 * jnp.log(_denominator(piece, xi))
    )


def _relative_position(piece: _Bin, x):
    """xi = (x - x_lo) / width, clamped to [0, 1]."""
    return _clamp_to_unit_interval((x - piece.x_lo) / piece.width)


def _rise(piece: _Bin, xi):
    """(y - y_lo) / height at relative position xi: (s xi^2 + d_lo xi (1 - xi)) / denominator."""
    return (piece.slope * xi**2 + piece.d_lo * xi * (1.0 - xi)) / _denominator(piece, xi)


def _forward_in_bin(piece: _Bin, x):
    """y and log dy/dx for x in the piece (Durkan et al., eq. 4)."""
    xi = _relative_position(piece, x)
    return piece.y_lo + piece.height * _rise(piece, xi), _log_derivative(piece, xi)


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


def _evaluate(in_bin, piece: _Bin, lower, upper, value):
    """`(out, log_det)` of a piece map at `value` (...), the identity outside [lower, upper].

    The piece map sees `value` clamped to [lower, upper], so the branch that `jnp.where`
    discards stays finite and its zero cotangent cannot turn into NaN.
    """
    out, log_det = in_bin(piece, jnp.clip(value, lower, upper))
    inside = _strictly_inside(value, lower, upper)
    return jnp.where(inside, out, value), jnp.where(inside, log_det, 0.0)


def _strictly_inside(value, lower, upper):
    """Where the piece map applies; on the ends the spline and the identity agree."""
    return (value > lower) & (value < upper)


_IN_BIN = (_forward_in_bin, _inverse_in_bin)  # by searched side: x (forward), y (inverse)


def _on_knots(x_knots, y_knots, derivatives, value, searched_side):
    """The spline through knots given as lists of num_bins + 1 arrays (...), at `value` (...)."""
    searched = (x_knots, y_knots)[searched_side]
    lower, upper = searched[0], searched[-1]
    knots = list(zip(x_knots, y_knots, derivatives))
    piece = _find_bin(knots, searched_side, jnp.clip(value, lower, upper))
    return _evaluate(_IN_BIN[searched_side], piece, lower, upper, value)


def _forward_partials(piece: _Bin, x):
    """Partial derivatives of the forward piece map's y and log dy/dx at x, element by element.

    Returns: two tuples of 7 arrays (...), the derivatives in the piece's fields (`_Bin`'s
    order) and in x. With xi = (x - x_lo) / width, s = height / width, t = xi (1 - xi), the map
    is y = y_lo + height N / D with N = s xi^2 + d_lo t, D = s + (d_lo + d_hi - 2 s) t, and
    log dy/dx = 2 log s + log M - 2 log D with M = d_hi xi^2 + 2 s t + d_lo (1 - xi)^2.
    """
    slope, width, height, d_lo, d_hi = piece.slope, piece.width, piece.height, piece.d_lo, piece.d_hi
    xi = _relative_position(piece, x)
    t, tilt = xi * (1.0 - xi), 1.0 - 2.0 * xi  # tilt = dt / dxi
    curvature = d_lo + d_hi - 2.0 * slope
    denominator = _denominator(piece, xi)
    ratio = _rise(piece, xi)  # N / D, and its derivatives:
    ratio_xi = (2.0 * slope * xi + d_lo * tilt - ratio * curvature * tilt) / denominator
    ratio_s = (xi**2 - ratio * (1.0 - 2.0 * t)) / denominator
    ratio_lo, ratio_hi = t * (1.0 - ratio) / denominator, -ratio * t / denominator
    slopes = _derivative_numerator(piece, xi)  # M, and the log-derivative's derivatives:
    log_xi = 2.0 * (d_hi * xi + slope * tilt - d_lo * (1.0 - xi)) / slopes - 2.0 * curvature * tilt / denominator
    log_s = 2.0 / slope + 2.0 * t / slopes - 2.0 * (1.0 - 2.0 * t) / denominator
    log_lo = (1.0 - xi) ** 2 / slopes - 2.0 * t / denominator
    log_hi = xi**2 / slopes - 2.0 * t / denominator
    # Chain rule through xi and s: d/dx_lo = -d/dxi / width, d/dwidth = -(s d/ds + xi d/dxi) / width,
    # d/dheight = d/ds / width, d/dx = d/dxi / width.
    y_partials = (
        -slope * ratio_xi,
        -slope * (slope * ratio_s + xi * ratio_xi),
        jnp.ones_like(ratio),
        ratio + slope * ratio_s,
        height * ratio_lo,
        height * ratio_hi,
        slope * ratio_xi,
    )
    log_partials = (
        -log_xi / width,
        -(slope * log_s + xi * log_xi) / width,
        jnp.zeros_like(ratio),
        log_s / width,
        log_lo,
        log_hi,
        log_xi / width,
    )
    return y_partials, log_partials


def _inverse_partials(piece: _Bin, y):
    """`_forward_partials` for the inverse piece map's x and log dx/dy at y, by implicit differentiation.

    With x = f^-1(y) and f' = dy/dx: dx/dfield = -(dy/dfield) / f', dx/dy = 1 / f', and the
    log-det -log f'(x) changes by -(d log f'/dfield + d log f'/dx dx/dfield) with a field and
    by -d log f'/dx dx/dy with y.
    """
    x, _ = _inverse_in_bin(piece, y)
    y_partials, log_partials = _forward_partials(piece, x)
    derivative, log_slope = y_partials[-1], log_partials[-1]
    x_partials = (*(-partial / derivative for partial in y_partials[:-1]), 1.0 / derivative)
    through_x = tuple(-log_slope * dx for dx in x_partials)
    return x_partials, (*(change - log for change, log in zip(through_x, log_partials[:-1])), through_x[-1])


_PARTIALS = (_forward_partials, _inverse_partials)  # by searched side, as `_IN_BIN`


def _locate(raw, value, searched_side, config):
    """The piece holding `value` (...) of the spline of raw params (3 * num_bins - 1, ...), params first.

    Returns: the piece (`_Bin`), its index (...) and the softmaxes (num_bins, ...) of the width and height rows.
    """
    knot_lists, probabilities = _knot_lists(*_split_rows(raw), config)
    knots = list(zip(*knot_lists))
    index = _bin_index([knot[searched_side] for knot in knots], jnp.clip(value, -config.bound, config.bound))
    return _select_bin(knots, index), index, probabilities


def _on_piece(searched_side, config, piece: _Bin, value):
    """`(out, log_det)` of the piece map at `value` (...), the identity outside the bound."""
    return _evaluate(_IN_BIN[searched_side], piece, -config.bound, config.bound, value)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _spline_of_params(raw, value, searched_side, config):
    """`(out, log_det)` of the spline of raw params (3 * num_bins - 1, ...), params first, at `value` (...).

    Its derivatives are written out (`_spline_of_params_jvp`), for the compiler's sake:
    differentiated through the knots' running sums, the selects and the piece's formulas,
    XLA copied every knot's cotangent into the fused loop of each raw param's gradient (an
    NSF training step, dim 16: 10854 instructions after optimisation instead of 2838, and
    1.5 times the compile time).
    """
    piece, _, _ = _locate(raw, value, searched_side, config)
    return _on_piece(searched_side, config, piece, value)


@_spline_of_params.defjvp
def _spline_of_params_jvp(searched_side, config, primals, tangents):
    """Tangents from the piece map's partial derivatives and the piece's own tangent, both in closed form.

    Reverse mode transposes this: the partials, stacked per output, are its residuals, and
    each raw param's cotangent takes a few products with them. Forward mode and higher
    derivatives go through the same rule.
    """
    raw, value = primals
    raw_tangent, value_tangent = tangents
    piece, index, probabilities = _locate(raw, value, searched_side, config)
    arg_tangents = jnp.stack([*_piece_tangent(raw, raw_tangent, index, probabilities, piece, config), value_tangent])
    out_partials, log_det_partials = _PARTIALS[searched_side](piece, jnp.clip(value, -config.bound, config.bound))
    inside = _strictly_inside(value, -config.bound, config.bound)
    outside = (0.0,) * len(piece) + (1.0,)  # the identity's partials
    out_partials = jnp.stack([jnp.where(inside, partial, other) for partial, other in zip(out_partials, outside)])
    log_det_partials = jnp.stack([jnp.where(inside, partial, 0.0) for partial in log_det_partials])
    tangent_outputs = (jnp.sum(out_partials * arg_tangents, axis=0), jnp.sum(log_det_partials * arg_tangents, axis=0))
    return _on_piece(searched_side, config, piece, value), tangent_outputs


def _piece_tangent(raw, raw_tangent, index, probabilities, piece, config) -> _Bin:
    """The tangent of piece `index` of the spline of `raw` along `raw_tangent`, both (3 * num_bins - 1, ...).

    Knot k of the x axis sits at -bound + 2 bound sum_{j<k} (m + c p_j), p = softmax of the
    width rows, m = min_bin_width, c = 1 - num_bins m, so d knot_k / d raw_j = 2 bound c p_j
    ([j < k] - sum_{l<k} p_l). The piece starts at knot `index` and its size is the next knot
    minus it; its start and size give sum_{j<index} p_j and p_index. Heights alike on the y
    axis. Interior derivative j is knot j + 1's, softplus(raw_j + offset) + min_derivative.
    """
    num_bins = (raw.shape[0] + 1) // 3
    _, _, raw_derivatives = _split_rows(raw)
    width_tangent, height_tangent, derivative_tangent = _split_rows(raw_tangent)
    bins = lax.broadcasted_iota(jnp.int32, width_tangent.shape, 0)

    def position_tangents(sizes_tangent, bin_probabilities, lo, size, min_size):
        stretch = 1.0 - num_bins * min_size
        probability_left = ((lo + config.bound) / (2.0 * config.bound) - index * min_size) / stretch
        probability_here = (size / (2.0 * config.bound) - min_size) / stretch
        moved = 2.0 * config.bound * stretch * bin_probabilities * sizes_tangent
        total = jnp.sum(moved, axis=0)
        lo_tangent = jnp.sum(jnp.where(bins < index, moved, 0.0), axis=0) - probability_left * total
        size_tangent = jnp.sum(jnp.where(bins == index, moved, 0.0), axis=0) - probability_here * total
        return lo_tangent, size_tangent

    width_probabilities, height_probabilities = probabilities
    x_lo, width = position_tangents(width_tangent, width_probabilities, piece.x_lo, piece.width, config.min_bin_width)
    y_lo, height = position_tangents(
        height_tangent, height_probabilities, piece.y_lo, piece.height, config.min_bin_height
    )
    moved = jax.nn.sigmoid(raw_derivatives + softplus_inverse(1.0 - config.min_derivative)) * derivative_tangent
    knot = bins[1:]  # interior derivative j sits on knot j + 1
    d_lo = jnp.sum(jnp.where(knot == index, moved, 0.0), axis=0)
    d_hi = jnp.sum(jnp.where(knot == index + 1, moved, 0.0), axis=0)
    return _Bin(x_lo, width, y_lo, height, d_lo, d_hi)


def _on_params(theta, value, searched_side, config):
    """The spline of raw params `theta` (..., 3 * num_bins - 1) at `value` (...), broadcast."""
    dtype = jnp.result_type(theta, value)
    theta = jnp.asarray(theta, dtype)
    shape = jnp.broadcast_shapes(theta.shape[:-1], jnp.shape(value))
    raw = jnp.moveaxis(jnp.broadcast_to(theta, (*shape, theta.shape[-1])), -1, 0)
    return _spline_of_params(raw, jnp.broadcast_to(value, shape).astype(dtype), searched_side, config)


def spline_forward(knots, x):
    """`(y, log dy/dx)` of the spline through `knots`, the identity outside [-bound, bound].

    Args:
      knots: `(x_knots, y_knots, derivatives)` from `spline_knots`, each (..., num_bins + 1).
      x: (...), broadcast against the knots' leading shape.
    """
    return _on_knots(*map(unstack_params, knots), x, searched_side=0)


def spline_inverse(knots, y):
    """`(x, log dx/dy)` of the inverse of the spline through `knots`; see `spline_forward`."""
    return _on_knots(*map(unstack_params, knots), y, searched_side=1)


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

    config = _Config(bound, min_bin_width, min_bin_height, min_derivative)

    def checked(theta):
        if jnp.shape(theta)[-1:] != (num_params,):
            raise ValueError(
                f"rational_quadratic_spline with {num_bins} bins needs theta of shape (..., {num_params}), "
                f"got {jnp.shape(theta)}."
            )
        return theta

    def forward(theta, x):
        return _on_params(checked(theta), x, 0, config)

    def inverse(theta, y):
        return _on_params(checked(theta), y, 1, config)

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
