"""`with_noisy_log_det`: a fast stochastic bijector, for testing code that must handle stochastic log-dets."""

from __future__ import annotations

import jax

from jaxflow.bijectors.base import Bijector


def with_noisy_log_det(bijector: Bijector, scale: float = 0.1) -> Bijector:
    """`bijector` made stochastic: each log-det gets N(0, scale^2) noise drawn from the call's key.

    Like a residual flow's estimated log-det, the result is unbiased, needs `key=`, and
    must be handed keys by every combinator, `Flow` and fit; unlike one, it compiles as
    fast as `bijector` itself. Values are those of `bijector`.
    """
    if bijector.stochastic:
        raise ValueError(f"with_noisy_log_det: {bijector.name} is stochastic already.")

    def noisy(direction):
        def transform(params, x, context=None, *, key):
            y, log_det = getattr(bijector, direction)(params, x, context)
            return y, log_det + scale * jax.random.normal(key, (), log_det.dtype)

        return transform

    return bijector._replace(
        forward=noisy("forward"), inverse=noisy("inverse"), name=f"noisy({bijector.name})", stochastic=True,
        data_init=None,
    )
