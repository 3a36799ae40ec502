"""Planar and radial flows: residual maps through a single hidden unit.

Forward (base -> data) is the closed-form map, the cheap direction used in
variational inference, where samples and their densities both come from it.
Inverse is numerical for tanh planar flows (a bracketed 1-D root find) and in
closed form for leaky-ReLU planar and radial flows. Both constrain their params so
that every value is invertible (Rezende & Mohamed, appendix A).

References: Rezende & Mohamed (2015), Variational Inference with Normalizing Flows,
https://arxiv.org/abs/1505.05770
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxflow.bijectors._checks import check_dim, check_event, checked_params, refuse_concrete
from jaxflow.bijectors._numerics import norm
from jaxflow.bijectors.base import Bijector
from jaxflow.bijectors.root_finding import solve_monotone
from jaxflow.bijectors.transformers import softplus_inverse

# 1 + gain stays this many rounding errors of the products that apply the gain above 0.
ROUNDING_MARGIN = 256


def one_plus_gain(raw, rounding_scale=1.0):
    """softplus(raw + log(e - 1)), equal to 1 at raw = 0, floored at ROUNDING_MARGIN * eps * rounding_scale.

    The gain `one_plus_gain(raw) - 1` is Rezende & Mohamed's m(a) = -1 + softplus(a),
    shifted so that zero params give the identity. Keeping 1 + gain separately avoids the
    cancellation of computing it from the gain. The floor keeps the computed map
    invertible: it applies the gain through products rounded to about eps * rounding_scale
    (a planar layer's u_hat, scale |w| |u|), and a 1 + gain near that error lets the
    computed map fold although the exact one does not (float32 planar layers at
    w.u = -16 with a floor of eps: a third of the determinants <= 0, log-dets off by 3
    nats; with this floor none folds, and log-dets err by 0.006 at most). A float32 layer
    then contracts no further than 3e-5 (planar: 3e-5 (1 + |w| |u|)) in one direction;
    stack layers to contract further.
    """
    value = jax.nn.softplus(raw + softplus_inverse(1.0))
    return jnp.maximum(value, ROUNDING_MARGIN * jnp.finfo(value.dtype).eps * rounding_scale)


class Activation(NamedTuple):
    """An increasing nonlinearity h with slopes in [0, 1], so that 1 + gain * h' > 0 for gain > -1.

    Attributes:
      fn: z -> h(z).
      slopes: z -> (h'(z), 1 - h'(z)), the second computed without cancellation.
      solve: (gain_plus_one, shift, target) -> the alpha with
        alpha + gain * h(alpha + shift) = target, for gain > -1 (the left side is then
        increasing in alpha).
    """

    fn: Callable
    slopes: Callable
    solve: Callable


def log_one_plus_gain_times_slope(activation: Activation, z, gain_plus_one):
    """log(1 + gain * h'(z)), written as log((1 - h') + h' * (1 + gain)): both terms are >= 0."""
    slope, complement = activation.slopes(z)
    return jnp.log(complement + slope * gain_plus_one)


def _tanh_slopes(z):
    decay = jnp.exp(-2 * jnp.abs(z))  # sech^2 without overflow: 4 e^{-2|z|} / (1 + e^{-2|z|})^2
    return 4 * decay / jnp.square(1 + decay), jnp.square(jnp.tanh(z))


def _tanh_solve(gain_plus_one, shift, target):
    # |tanh| < 1 puts the root within |gain| of the target.
    gain = gain_plus_one - 1
    reach = jnp.abs(gain)
    return solve_monotone(lambda alpha: alpha + gain * jnp.tanh(alpha + shift), target, target - reach, target + reach)


TANH = Activation(jnp.tanh, _tanh_slopes, _tanh_solve)


def leaky_relu(negative_slope: float) -> Activation:
    """h(z) = z for z >= 0 and negative_slope * z below; 0 <= negative_slope <= 1.

    The 1-D equation is linear on each side of the kink alpha = -shift, where its left
    side equals -shift, so the inverse is exact.
    """
    if not 0.0 <= negative_slope <= 1.0:
        raise ValueError(
            f"leaky_relu: negative_slope must lie in [0, 1] for the planar constraint to hold, got {negative_slope}."
        )

    def slope(z):
        return jnp.where(z >= 0, 1.0, negative_slope).astype(jnp.result_type(z))

    def solve(gain_plus_one, shift, target):
        side_slope = slope(target + shift)
        gain = gain_plus_one - 1
        return (target - gain * side_slope * shift) / ((1 - side_slope) + side_slope * gain_plus_one)

    return Activation(lambda z: z * slope(z), lambda z: (slope(z), 1 - slope(z)), solve)


DEFAULT_NEGATIVE_SLOPE = 0.01


def _activation(name: str, negative_slope: float | None) -> Activation:
    if name == "tanh":
        if negative_slope is not None:
            raise ValueError(f"planar: negative_slope is the leaky ReLU's; tanh takes none, got {negative_slope!r}.")
        return TANH
    if name == "leaky_relu":
        return leaky_relu(DEFAULT_NEGATIVE_SLOPE if negative_slope is None else negative_slope)
    raise ValueError(f"planar: activation must be 'tanh' or 'leaky_relu', got {name!r}.")


def planar(dim: int, *, activation: str = "tanh", negative_slope: float | None = None) -> Bijector:
    """y = x + u_hat h(w . x + b), invertible for every value of the params.

    u_hat = u + (m - w.u) w / |w|^2 with m = one_plus_gain(w.u) - 1 > -1, so that
    w . u_hat = m and the Jacobian determinant 1 + m h'(w.x + b) (matrix determinant
    lemma) is positive. The inverse solves the 1-D equation alpha + m h(alpha + b) = w.y
    for alpha = w.x, then x = y - u_hat h(alpha + b).

    Starts at the identity (u = 0) with a random unit-scale w, so that gradients reach
    u at once. Params: {"u": (dim,), "w": (dim,), "bias": ()}; w must stay non-zero.

    Args:
      dim: event size.
      activation: "tanh" (inverse by root finding to float precision, see
        `root_finding`) or "leaky_relu" (inverse in closed form).
      negative_slope: the leaky ReLU's slope for negative inputs, in [0, 1] (default 0.01);
        refused with tanh.
    """
    dim = check_dim("planar", dim)
    h = _activation(activation, negative_slope)
    name = f"planar_{activation}"

    def init(key):
        return {"u": jnp.zeros(dim), "w": jax.random.normal(key, (dim,)) / np.sqrt(dim), "bias": jnp.zeros(())}

    def constrained(params, dtype):
        params = checked_params(name, params, {"u": (dim,), "w": (dim,), "bias": ()}, dtype)
        u, w = params["u"], params["w"]
        refuse_concrete(name, w @ w > 0, "w is zero, and u_hat divides by |w|^2; w must stay non-zero.")
        # The floor's scale is a numerical bound, not a function to train: no gradient (norm's is NaN at u = 0).
        gain_plus_one = one_plus_gain(w @ u, jax.lax.stop_gradient(1 + norm(w) * norm(u)))
        u_hat = u + (gain_plus_one - 1 - w @ u) * w / (w @ w)
        return u_hat, w, params["bias"], gain_plus_one

    def forward(params, x, context=None):
        del context
        x = check_event(name, x, (dim,))
        u_hat, w, bias, gain_plus_one = constrained(params, x.dtype)
        z = w @ x + bias
        return x + u_hat * h.fn(z), log_one_plus_gain_times_slope(h, z, gain_plus_one)

    def inverse(params, y, context=None):
        del context
        y = check_event(name, y, (dim,))
        u_hat, w, bias, gain_plus_one = constrained(params, y.dtype)
        alpha = h.solve(gain_plus_one, bias, w @ y)
        return y - u_hat * h.fn(alpha + bias), -log_one_plus_gain_times_slope(h, alpha + bias, gain_plus_one)

    return Bijector(init, forward, inverse, name)


def radial(dim: int) -> Bijector:
    """y = x + beta (x - x0) / (alpha + r) with r = |x - x0|, invertible for every value of the params.

    alpha = exp(log_alpha) > 0 and beta = alpha (one_plus_gain(beta_raw) - 1) >= -alpha
    (Rezende & Mohamed's condition). With c = alpha + beta the map scales x - x0 by
    (c + r) / (alpha + r), so
      log det = (dim - 1) log((c + r) / (alpha + r)) + log((alpha c + r (2 alpha + r)) / (alpha + r)^2),
    and the inverse solves r^2 + (c - s) r - alpha s = 0 for r given s = |y - x0|
    (its positive root, in a cancellation-free form).

    Starts at the identity (beta = 0) around a random centre. Params:
    {"center": (dim,), "log_alpha": (), "beta_raw": ()}.
    """
    dim = check_dim("radial", dim)

    def init(key):
        return {"center": jax.random.normal(key, (dim,)), "log_alpha": jnp.zeros(()), "beta_raw": jnp.zeros(())}

    def unpack(params, dtype):
        params = checked_params("radial", params, {"center": (dim,), "log_alpha": (), "beta_raw": ()}, dtype)
        alpha = jnp.exp(params["log_alpha"])
        return params["center"], alpha, alpha * one_plus_gain(params["beta_raw"])

    def scale_and_log_det(alpha, alpha_plus_beta, r):
        scale = (alpha_plus_beta + r) / (alpha + r)
        # (alpha c + r (2 alpha + r)) / (alpha + r)^2, divided through once first so that r^2 cannot overflow.
        radial_slope = (alpha * alpha_plus_beta / (alpha + r) + r * ((2 * alpha + r) / (alpha + r))) / (alpha + r)
        return scale, (dim - 1) * jnp.log(scale) + jnp.log(radial_slope)

    def forward(params, x, context=None):
        del context
        x = check_event("radial", x, (dim,))
        center, alpha, alpha_plus_beta = unpack(params, x.dtype)
        scale, log_det = scale_and_log_det(alpha, alpha_plus_beta, norm(x - center))
        return center + scale * (x - center), log_det

    def inverse(params, y, context=None):
        del context
        y = check_event("radial", y, (dim,))
        center, alpha, alpha_plus_beta = unpack(params, y.dtype)
        r = _radius_before(alpha, alpha_plus_beta, norm(y - center))
        scale, log_det = scale_and_log_det(alpha, alpha_plus_beta, r)
        return center + (y - center) / scale, -log_det

    return Bijector(init, forward, inverse, "radial")


def _radius_before(alpha, alpha_plus_beta, s):
    """The r >= 0 with r (alpha + beta + r) / (alpha + r) = s: the positive root of r^2 + d r - alpha s, d = c - s."""
    d = alpha_plus_beta - s
    # sqrt(d^2 + 4 alpha s); for |d| > 1 as |d| sqrt(1 + 4 alpha s / d^2), which cannot overflow d^2.
    large = jnp.abs(d) > 1
    large_d = jnp.where(large, jnp.abs(d), 1.0)
    root = jnp.where(
        large, large_d * jnp.sqrt(1 + 4 * alpha * (s / large_d) / large_d), jnp.sqrt(jnp.square(d) + 4 * alpha * s)
    )
    non_negative = d >= 0
    # For d >= 0 the textbook (root - d) / 2 cancels; rationalise it there.
    return jnp.where(non_negative, 2 * alpha * s / jnp.where(non_negative, d + root, 1.0), root / 2 - d / 2)
