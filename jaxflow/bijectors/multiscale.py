"""The multi-scale architecture of RealNVP and Glow as one bijector from (H, W, C) to (H, W, C).

In the data -> base (`inverse`) direction each level squeezes the image, runs a stack of
Glow steps and factors out half of the channels, which go straight to the base; the other
half continues to the next level, at half the resolution. The last level keeps all its
channels. Each level then undoes its squeeze on the latent, so the latent has the input's
shape and a standard normal base of that shape serves (the reassembly is a fixed
permutation of the entries and adds nothing to the log-det).

References: Dinh et al. (2016), RealNVP, https://arxiv.org/abs/1605.08803;
Kingma & Dhariwal (2018), Glow, https://arxiv.org/abs/1807.03039
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxflow.bijectors import transformers
from jaxflow.bijectors._checks import check_data_batch, check_event, is_positive_int
from jaxflow.bijectors.base import Bijector, chain, initialize_layer, invert, maybe_keyless, stack, transform
from jaxflow.bijectors.image import check_image_shape, glow_step, image_coupling, squeeze


def factor_out(inner: Bijector, shape) -> Bijector:
    """Applies `inner` to the first C // 2 channels of an event (H, W, C); the rest pass unchanged.

    The channels that pass unchanged are the factored-out ones of a multi-scale flow.
    Params: `inner`'s. A stochastic `inner` makes the result stochastic (it takes `key=`).
    """
    shape = check_image_shape("factor_out", shape)
    if shape[-1] < 2:
        raise ValueError(f"factor_out: needs C >= 2 channels to split, got shape {shape}.")
    kept = shape[-1] // 2
    name = f"factor_out({inner.name})"

    def run(direction, params, x, context, key):
        x = check_event(name, x, shape)
        y, log_det = transform(inner, direction, params, x[..., :kept], context, key)
        return jnp.concatenate([y, x[..., kept:]], axis=-1), log_det

    def forward(params, x, context=None, *, key=None):
        return run("forward", params, x, context, key)

    def inverse(params, y, context=None, *, key=None):
        return run("inverse", params, y, context, key)

    def data_init(params, y, context=None):
        params, x = initialize_layer(inner, params, y[..., :kept], context)
        return params, jnp.concatenate([x, y[..., kept:]], axis=-1)

    return Bijector(
        inner.init, *maybe_keyless(forward, inverse, inner.stochastic), name, inner.stochastic,
        data_init if inner.data_init is not None else None,
    )


def multiscale(
    shape,
    *,
    levels: int,
    steps_per_level: int,
    transformer: transformers.Transformer | None = None,
    hidden_channels: int = 64,
    num_blocks: int = 2,
    lu: bool = True,
    learned_prior: bool = False,
    context_dim: int | None = None,
    unroll: int | bool | None = None,
    name: str = "multiscale",
) -> Bijector:
    """Glow's multi-scale flow on images of `shape` (H, W, C), with latents of the same shape.

    Level l (from 1) works at resolution (H / 2^l, W / 2^l): squeeze, then `steps_per_level`
    `glow_step`s under `stack` (looped, compile time flat in depth; see `unroll`), then, except at the last level,
    half of the channels leave for the base. Run `jaxflow.initialize_from_data` once on a
    data batch to initialise every actnorm.

    Args:
      shape: (H, W, C); H and W divisible by 2^levels.
      levels: number of scales (>= 1).
      steps_per_level: Glow steps per scale (>= 1).
      transformer: the element-wise map of the steps' couplings; None for affine (see `glow_step`).
      hidden_channels, num_blocks: size of every coupling's CNN conditioner.
      lu: LU-parametrised 1x1 convolutions, else plain ones.
      learned_prior: if True, the factored-out channels get Glow's learned prior
        N(mu(h), sigma(h)^2), conditional on the channels h that stay, written as an
        affine channel coupling just before the factoring (identity at init).
      context_dim: size of the context vector for a conditional flow.
      unroll: steps per loop iteration within a level (see `stack`). The default unrolls
        them all on CPU, where XLA computes convolution gradients inside a loop about
        18x slower than outside one (measured, jax 0.10), and keeps the loop elsewhere.
      name: names the flow in error and validation messages (e.g. "glow").

    Params: nested tuples, one `chain` per level, the next level inside `factor_out`.

    References: Kingma & Dhariwal (2018), Glow, https://arxiv.org/abs/1807.03039
    """
    shape = _checked_levels(shape, levels, steps_per_level, name)
    unroll = jax.default_backend() == "cpu" if unroll is None else unroll
    network = dict(hidden_channels=hidden_channels, num_blocks=num_blocks, context_dim=context_dim)

    def level(level_shape, depth):
        height, width, channels = level_shape
        squeezed = (height // 2, width // 2, 4 * channels)
        step = glow_step(squeezed, transformer=transformer, lu=lu, **network)
        steps = stack(step, steps_per_level, unroll=unroll, name=f"level{depth}_steps")
        parts = [squeeze(level_shape)]  # in forward order: the level's latent enters here
        if depth < levels:
            parts.append(factor_out(level((height // 2, width // 2, 2 * channels), depth + 1), squeezed))
            if learned_prior:
                parts.append(image_coupling(squeezed, transformers.affine(), mask="channel", **network))
        return chain(*parts, steps, invert(squeeze(level_shape)), name=name if depth == 1 else f"level{depth}")

    flow = level(shape, 1)

    def data_init(params, y, context=None):  # the whole batch's shape checked here, not one squeeze's event
        return flow.data_init(params, check_data_batch(name, y, shape), context)

    return flow._replace(data_init=data_init)  # glow_step's actnorm: a data init is always there


def _checked_levels(image_shape, levels, steps_per_level, owner: str) -> tuple[int, int, int]:
    """`image_shape` as a tuple, after checking that `levels` squeezes fit it.

    Raises ValueError (messages start with `owner`) for a shape that is not (H, W, C) of
    positive sizes, `levels` or `steps_per_level` not a positive int, or H, W not
    divisible by 2**levels (saying how many levels the shape allows).
    """
    shape = check_image_shape(owner, image_shape)
    for name, value in (("levels", levels), ("steps_per_level", steps_per_level)):
        if not is_positive_int(value):
            raise ValueError(f"{owner}: {name} must be a positive int, got {value!r}.")
    height, width, _ = shape
    scale = 2**levels
    if height % scale or width % scale:
        raise ValueError(
            f"{owner}: {levels} levels squeeze the image {levels} times, halving H and W each time, so both must be "
            f"divisible by 2**{levels} = {scale}; got shape {shape}, which allows at most "
            f"{_max_levels(height, width)} level(s). Use fewer levels, or pad or crop the images."
        )
    return shape


def _max_levels(height: int, width: int) -> int:
    """The number of times both sizes can be halved exactly."""
    levels = 0
    while height % 2 == 0 and width % 2 == 0:
        height, width, levels = height // 2, width // 2, levels + 1
    return levels
