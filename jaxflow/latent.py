"""Latent-space tools for any flow: encode, decode, interpolate, attribute vectors, temperature.

The latent of `x` is `z = bijector.inverse(x)`; Glow's latent arithmetic works on `z`
because the flow is exactly invertible. All functions take batches (leading axis).

References: Kingma & Dhariwal (2018), Glow, https://arxiv.org/abs/1807.03039
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxflow.bijectors._checks import batch_shape_of, is_positive_int, refuse_concrete
from jaxflow.bijectors.base import transform
from jaxflow.distributions import Flow, check_sample_shape, sample_shape


def _map(flow: Flow, direction: str, params, batch, context, key):
    """The bijector's `direction` over a batch, with `Flow`'s rules for contexts (shared or one per row) and keys."""
    batch_shape = flow._batch_shape(jnp.shape(batch), "a batch")
    context, context_batch = flow._checked_context(context, f"latent ({direction})")
    one = lambda v, c, k: transform(flow.bijector, direction, params["bijector"], v, c, k)[0]  # noqa: E731
    return flow._map(one, batch_shape, jnp.asarray(batch), context, context_batch, key)


def encode(flow: Flow, params, x, context=None, *, key=None):
    """Latents of a batch `x` (n, *event) -> (n, *event)."""
    return _map(flow, "inverse", params, x, context, key)


def decode(flow: Flow, params, z, context=None, *, key=None):
    """Data for a batch of latents `z` (n, *event) -> (n, *event)."""
    return _map(flow, "forward", params, z, context, key)


def _slerp(a, b, t):
    """From `a` (t = 0) to `b` (t = 1) on the sphere; linear if an end is (near) zero or the ends (near) collinear.

    Parallel ends (an angle below about 1.4e-3) give paths that differ by under 1e-6
    relative; between opposite ends every great circle is as short, so none is chosen and
    the path is the straight line. The tests come before the divisions and the arccos, whose
    gradients are infinite at a zero norm and at cos = +-1 (double where).
    """
    a_flat, b_flat = a.reshape(-1), b.reshape(-1)
    squared_norms = jnp.stack([jnp.dot(a_flat, a_flat), jnp.dot(b_flat, b_flat)])
    zero_end = jnp.min(squared_norms) <= jnp.finfo(squared_norms.dtype).tiny  # no direction, no angle
    norms = jnp.sqrt(jnp.where(zero_end, 1.0, squared_norms))
    cos = jnp.dot(a_flat, b_flat) / (norms[0] * norms[1])
    linear = zero_end | (jnp.abs(cos) > 1 - 1e-6)
    angle = jnp.arccos(jnp.clip(jnp.where(linear, 0.0, cos), -1.0, 1.0))
    safe = jnp.where(linear, 1.0, jnp.sin(angle))
    spherical = (jnp.sin((1 - t) * angle) * a + jnp.sin(t * angle) * b) / safe
    return jnp.where(linear, (1 - t) * a + t * b, spherical)


def interpolate(
    flow: Flow, params, x_start, x_end, num_points: int, *, spherical: bool = False, context=None, key=None
):
    """Points on the path between two data points, taken in latent space.

    Args:
      x_start, x_end: two events of the flow's event shape, or two batches of them of one shape
        (*batch, *event), joined row by row.
      num_points: points on the path, ends included.
      spherical: slerp instead of a straight line (keeps Gaussian latents on the typical shell).
      context: for a conditional flow, one context shared by both ends and the path.

    Returns:
      (num_points, *batch, *event) decoded points, `x_start` first and `x_end` last.
    """
    if not is_positive_int(num_points) or num_points < 2:
        raise ValueError(f"interpolate: num_points counts both ends and must be an int >= 2, got {num_points!r}.")
    if flow._checked_context(context, "latent.interpolate")[1]:
        raise ValueError(
            f"interpolate: pass one context of shape {flow.context_shape}, shared by the ends and the path; "
            f"got a batch of contexts, shape {jnp.shape(context)}."
        )
    x_start, x_end = jnp.asarray(x_start), jnp.asarray(x_end)
    if x_start.shape != x_end.shape:
        raise ValueError(
            f"interpolate: x_start and x_end must have one shape, got {x_start.shape} and {x_end.shape}."
        )
    z = encode(flow, params, jnp.stack([x_start, x_end]), context, key=key)  # (2, *batch, *event)
    t = jnp.linspace(0.0, 1.0, num_points)
    if spherical:
        rows = z.reshape(2, -1, *flow.event_shape)
        slerp_rows = jax.vmap(_slerp, in_axes=(0, 0, None))
        path = jax.vmap(slerp_rows, in_axes=(None, None, 0))(rows[0], rows[1], t).reshape(num_points, *z.shape[1:])
    else:
        path = z[0] + t.reshape(-1, *([1] * (z.ndim - 1))) * (z[1] - z[0])
    return decode(flow, params, path, context, key=key)


def attribute_vector(flow: Flow, params, x_with, x_without, *, context_with=None, context_without=None, key=None):
    """Glow's attribute direction: mean latent of `x_with` minus mean latent of `x_without`.

    For a conditional flow each group takes its own contexts, `context_with` and
    `context_without`: one shared by the group or one per row.
    """
    for label, group in (("x_with", x_with), ("x_without", x_without)):
        if jnp.size(group) == 0:
            raise ValueError(f"attribute_vector: {label} is an empty batch; each group needs at least one example.")
    key_with, key_without = (None, None) if key is None else jax.random.split(key)

    def mean_latent(x, context, key):  # over every batch axis: (event_shape)
        return encode(flow, params, x, context, key=key).reshape(-1, *flow.event_shape).mean(0)

    return mean_latent(x_with, context_with, key_with) - mean_latent(x_without, context_without, key_without)


def apply_attribute(flow: Flow, params, x, vector, amount: float = 1.0, context=None, *, key=None):
    """Moves a batch `x` along an attribute `vector` in latent space by `amount` and decodes it."""
    vector = jnp.asarray(vector)
    batch_shape_of("apply_attribute: vector", vector.shape, flow.event_shape)  # one shared, or one per row
    z = encode(flow, params, x, context, key=key)
    return decode(flow, params, z + amount * vector, context, key=key)


def sample_with_temperature(flow: Flow, params, key, num_samples, temperature: float, context=None):
    """Samples with the Gaussian base's spread scaled by `temperature` (Glow's T < 1 for cleaner samples).

    Only defined for Gaussian bases (standard or diagonal normal), where it samples the
    base density raised to the power 1 / T^2, renormalised. `num_samples` is a count or a
    sample shape, read as `Flow.sample` reads its shape (with per-sample contexts, () means one
    draw per context): the draws are (*shape, *event). `temperature` may be traced (under jit,
    or vmapped over temperatures); it is checked to be finite and positive when concrete.
    """
    if flow.base.name not in ("standard_normal", "diagonal_normal"):
        raise ValueError(f"temperature sampling needs a Gaussian base, got {flow.base.name}.")
    what = "sample_with_temperature: num_samples"
    context_batch = flow._checked_context(context, "sample_with_temperature")[1]
    shape = sample_shape(check_sample_shape(num_samples, what), context_batch, what)
    temperature = jnp.asarray(temperature)
    if temperature.ndim:
        raise ValueError(
            f"sample_with_temperature: temperature must be a scalar, got shape {temperature.shape}; "
            "jax.vmap over temperatures to sample several."
        )
    refuse_concrete(
        "sample_with_temperature", jnp.isfinite(temperature) & (temperature > 0),
        f"temperature must be a finite positive number, got {temperature}.",
    )
    z, bijector_key = flow._base_draws(params, key, shape)
    loc = params["base"]["loc"] if flow.base.name == "diagonal_normal" else 0.0
    return decode(flow, params, loc + temperature * (z - loc), context, key=bijector_key)
