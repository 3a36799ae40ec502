"""ActNorm: a per-channel affine map initialised from data (Glow)."""

from __future__ import annotations

import jax.numpy as jnp

from jaxflow.bijectors._checks import as_shape, check_data_batch
from jaxflow.bijectors.base import Bijector
from jaxflow.bijectors.elementwise import affine_with_params

ROUNDING_SPREAD = 16  # a constant channel's computed std: measured up to 2.5 eps |mean| in float32


def actnorm(shape) -> Bijector:
    """Per-channel (last axis) scale and shift, with data-dependent initialisation.

    Run `jaxflow.initialize_from_data(bijector, params, batch)` once before training, with
    a batch of shape (batch, *shape) holding at least 2 rows: it sets the params so that
    the batch leaves this layer (towards the base) with zero mean and unit variance per
    channel. A channel constant in the batch up to rounding (std at most `ROUNDING_SPREAD`
    eps times its mean's magnitude, eps that of the batch's dtype) is only shifted, with scale 1:
    dividing by its std would give a scale of 1/rounding error, and stacked ActNorms would
    multiply those. Params: {"shift": (C,), "log_scale": (C,)}.

    References: Kingma & Dhariwal (2018), Glow, https://arxiv.org/abs/1807.03039
    """
    shape = as_shape(shape)

    def data_init(params, y, context=None):
        del params, context
        y = check_data_batch("actnorm", y, shape)
        axes = tuple(range(y.ndim - 1 if shape else y.ndim))  # all but the channel axis (scalar events: none)
        mean, variance = jnp.mean(y, axis=axes), jnp.var(y, axis=axes)
        constant = variance <= jnp.square(ROUNDING_SPREAD * jnp.finfo(y.dtype).eps * mean)
        # log std from the variance, guarded twice: sqrt's infinite slope at 0 would make NaN gradients.
        log_scale = jnp.where(constant, 0.0, 0.5 * jnp.log(jnp.where(constant, 1.0, variance)))
        return {"shift": mean, "log_scale": log_scale}, (y - mean) * jnp.exp(-log_scale)

    return affine_with_params("actnorm", shape, shape[-1:])._replace(data_init=data_init)
