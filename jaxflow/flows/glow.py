"""Glow: a multi-scale flow on images of actnorm, invertible 1x1 convolutions and channel couplings.

References: Kingma & Dhariwal (2018), Glow, https://arxiv.org/abs/1807.03039
"""

from __future__ import annotations

from jaxflow.bijectors import transformers
from jaxflow.bijectors._checks import as_shape
from jaxflow.bijectors.multiscale import multiscale
from jaxflow.distributions import Flow, standard_normal

_COUPLINGS = {"affine": transformers.affine, "additive": transformers.additive}


def glow(
    image_shape,
    *,
    levels: int = 2,
    steps_per_level: int = 4,
    hidden_channels: int = 64,
    num_blocks: int = 2,
    lu: bool = True,
    coupling: str = "affine",
    learned_prior: bool = False,
    context_dim: int | None = None,
    unroll: int | bool | None = None,
) -> Flow:
    """Glow on images of shape (H, W, C), with a standard normal base of the same shape.

    In the data -> base direction each of the `levels` scales squeezes the image
    (space-to-depth, (h, w, c) -> (h/2, w/2, 4c)), runs `steps_per_level` Glow steps
    (actnorm, invertible 1x1 convolution, channel coupling with a residual-CNN
    conditioner) as one `lax.scan`, and, except at the last scale, factors half of the
    channels out to the base. Looped (`unroll=1`, the default off CPU), compile time does
    not grow with `steps_per_level`; on CPU the default unrolls the steps (see `multiscale`).

    Fresh params are the identity. Before training, set every actnorm from a data batch:

        params = flow.init(key)
        params["bijector"], _ = jaxflow.initialize_from_data(flow.bijector, params["bijector"], batch)

    Args:
      image_shape: (H, W, C); H and W divisible by 2**levels.
      levels: number of scales (>= 1).
      steps_per_level: Glow steps per scale (>= 1).
      hidden_channels, num_blocks: width and residual blocks of every coupling's CNN.
      lu: LU-parametrised 1x1 convolutions (always invertible), else plain ones.
      coupling: "affine" (Glow's default) or "additive" (volume preserving, as in NICE).
      learned_prior: give the factored-out channels Glow's learned prior, a Gaussian
        whose mean and scale depend on the channels that stay.
      context_dim: size of the context vector for a conditional flow.
      unroll: steps per loop iteration within a level (see `multiscale`: by default
        unrolled on CPU, looped elsewhere).

    Returns:
      A `Flow` over events of shape `image_shape`.

    Raises:
      ValueError: for a shape that is not (H, W, C), H or W not divisible by 2**levels,
        fewer than one level or step, or an unknown `coupling`.

    References: Kingma & Dhariwal (2018), Glow, https://arxiv.org/abs/1807.03039
    """
    if coupling not in _COUPLINGS:
        raise ValueError(f"glow: coupling must be one of {sorted(_COUPLINGS)}, got {coupling!r}.")
    bijector = multiscale(
        image_shape,
        levels=levels,
        steps_per_level=steps_per_level,
        transformer=_COUPLINGS[coupling](),
        hidden_channels=hidden_channels,
        num_blocks=num_blocks,
        lu=lu,
        learned_prior=learned_prior,
        context_dim=context_dim,
        unroll=unroll,
        name="glow",
    )
    shape = as_shape(image_shape)
    return Flow(standard_normal(shape), bijector, None if context_dim is None else (context_dim,))
