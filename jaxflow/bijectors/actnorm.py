"""ActNorm: a per-channel affine map initialised from data (Glow)."""

from __future__ import annotations

import jax.numpy as jnp

from jaxflow.bijectors._checks import as_shape, check_event
from jaxflow.bijectors.base import Bijector
from jaxflow.bijectors.elementwise import affine_with_params


def actnorm(shape, *, eps: float = 1e-6) -> Bijector:
    """Per-channel (last axis) scale and shift, with data-dependent initialisation.

    Run `jaxflow.initialize_from_data(bijector, params, batch)` once before training:
    it sets the params so that the batch leaves this layer (towards the base) with zero
    mean and unit variance per channel. Params: {"shift": (C,), "log_scale": (C,)}.

    References: Kingma & Dhariwal (2018), Glow, https://arxiv.org/abs/1807.03039
    """
    shape = as_shape(shape)

    def data_init(params, y, context=None):
        del params, context
        y = check_event("actnorm", y, (y.shape[0], *shape) if y.ndim else shape, what="data batch")
        axes = tuple(range(y.ndim - 1))
        mean = jnp.mean(y, axis=axes)
        log_scale = jnp.log(jnp.std(y, axis=axes) + eps)
        return {"shift": mean, "log_scale": log_scale}, (y - mean) * jnp.exp(-log_scale)

    return affine_with_params("actnorm", shape, shape[-1:])._replace(data_init=data_init)
