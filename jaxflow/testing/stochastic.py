"""`with_noisy_log_det`: a fast stochastic bijector, for testing code that must handle stochastic log-dets."""

from __future__ import annotations

import jax

from jaxflow.bijectors.base import Bijector


def with_noisy_log_det(bijector: Bijector, scale: float = 0.1) -> Bijector:
    """`bijector` made stochastic: each log-det gets N(0, scale^2) noise drawn from the call's key.

    Like a residual flow's estimated log-det, the result is unbiased, needs `key=`, must be
    handed keys by every combinator, `Flow` and fit, and its forward and inverse estimates
    for one key cancel (the inverse subtracts the noise the forward adds), as the kit checks;
    unlike one, it compiles as fast as `bijector` itself. Values are those of `bijector`.
    """
    if bijector.stochastic:
        raise ValueError(f"with_noisy_log_det: {bijector.name} is stochastic already.")

    def noisy(direction, sign):
        def transform(params, x, context=None, *, key):
            y, log_det = getattr(bijector, direction)(params, x, context)
            return y, log_det + sign * scale * jax.random.normal(key, (), log_det.dtype)

        return transform

    return bijector._replace(
        forward=noisy("forward", 1.0), inverse=noisy("inverse", -1.0), name=f"noisy({bijector.name})", stochastic=True,
        data_init=None,
    )
