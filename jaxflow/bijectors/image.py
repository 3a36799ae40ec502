"""Bijectors on images, events of shape (H, W, C): squeeze, masked couplings and Glow's step.

Masks follow `coupling.py`: True marks entries that pass unchanged and condition the rest.

References: Dinh et al. (2016), RealNVP, https://arxiv.org/abs/1605.08803;
Kingma & Dhariwal (2018), Glow, https://arxiv.org/abs/1807.03039
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from jaxflow.bijectors import transformers
from jaxflow.bijectors._checks import as_shape, check_context, check_event
from jaxflow.bijectors.actnorm import actnorm
from jaxflow.bijectors.base import Bijector, chain
from jaxflow.bijectors.linear import linear, lu_linear
from jaxflow.conditioners.cnn import resnet_cnn


def check_image_shape(name: str, shape) -> tuple[int, int, int]:
    """`shape` as a tuple after checking it is (H, W, C) of positive sizes (messages start with `name`)."""
    shape = as_shape(shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"{name}: expected an image shape (H, W, C) of positive sizes, got {shape}.")
    return shape


def _space_to_depth(x):
    """(H, W, C) -> (H/2, W/2, 4C); output channel c * 4 + 2 * row + col holds pixel (row, col) of its 2x2 block."""
    height, width, channels = x.shape
    blocks = x.reshape(height // 2, 2, width // 2, 2, channels).transpose(0, 2, 4, 1, 3)
    return blocks.reshape(height // 2, width // 2, 4 * channels)


def _depth_to_space(y):
    """The inverse of `_space_to_depth`: (H/2, W/2, 4C) -> (H, W, C)."""
    height, width, channels = y.shape[0], y.shape[1], y.shape[2] // 4
    blocks = y.reshape(height, width, channels, 2, 2).transpose(0, 3, 1, 4, 2)
    return blocks.reshape(2 * height, 2 * width, channels)


def squeeze(shape=None) -> Bijector:
    """Space-to-depth: (H, W, C) -> (H/2, W/2, 4C), each 2x2 block of pixels stacked into channels.

    A permutation of the entries, so the log-det is 0. `forward` squeezes and `inverse`
    unsqueezes; `invert(squeeze())` goes the other way. Output channel `c * 4 + 2 * row + col`
    holds channel c of the pixel at (row, col) in its block, as in Glow.

    Args:
      shape: optional (H, W, C); when given, inputs are checked against it. H and W must be even.

    References: Dinh et al. (2016), RealNVP, https://arxiv.org/abs/1605.08803
    """
    if shape is not None:
        shape = check_image_shape("squeeze", shape)
        _check_even("squeeze", shape)
    squeezed = None if shape is None else (shape[0] // 2, shape[1] // 2, 4 * shape[2])

    def forward(params, x, context=None):
        del params, context
        x = check_event("squeeze", x, shape)
        _check_even("squeeze", x.shape)
        return _space_to_depth(x), jnp.zeros((), x.dtype)

    def inverse(params, y, context=None):
        del params, context
        y = check_event("squeeze", y, squeezed)
        if y.ndim != 3 or y.shape[-1] % 4:
            raise ValueError(
                f"squeeze: unsqueezing needs an event (H, W, C) with C divisible by 4, got shape {y.shape}."
            )
        return _depth_to_space(y), jnp.zeros((), y.dtype)

    return Bijector(lambda key: (), forward, inverse, "squeeze")


def _check_even(name, shape):
    if len(shape) != 3 or shape[0] % 2 or shape[1] % 2:
        raise ValueError(f"{name}: expected an image (H, W, C) with even H and W, got shape {tuple(shape)}.")


def checkerboard_mask(shape, parity: int = 0) -> np.ndarray:
    """Bool (H, W, C), True on pixels with (row + col) % 2 == parity, for every channel."""
    height, width, channels = check_image_shape("checkerboard_mask", shape)
    _check_parity("checkerboard_mask", parity)
    if height * width < 2:
        raise ValueError(f"checkerboard_mask: needs at least two pixels, got shape {(height, width, channels)}.")
    rows, cols = np.indices((height, width))
    return np.broadcast_to(((rows + cols) % 2 == parity)[..., None], (height, width, channels)).copy()


def channel_mask(shape, parity: int = 0) -> np.ndarray:
    """Bool (H, W, C), True on the first C // 2 channels (parity 0) or on the others (parity 1)."""
    height, width, channels = check_image_shape("channel_mask", shape)
    _check_parity("channel_mask", parity)
    if channels < 2:
        raise ValueError(f"channel_mask: needs at least 2 channels to split, got shape {(height, width, channels)}.")
    first_half = np.arange(channels) < channels // 2
    return np.broadcast_to(first_half != bool(parity), (height, width, channels)).copy()


def _check_parity(name, parity):
    if parity not in (0, 1):
        raise ValueError(f"{name}: parity must be 0 or 1, got {parity!r}.")


def image_coupling(
    shape,
    transformer: transformers.Transformer,
    *,
    mask: str = "checkerboard",
    parity: int = 0,
    hidden_channels: int = 64,
    num_blocks: int = 2,
    context_dim: int | None = None,
) -> Bijector:
    """A coupling layer on images whose conditioner is a residual CNN (`resnet_cnn`).

    - mask="channel": channels are split statically; the conditioner sees the identity
      half (`channel_mask(shape, parity)`) and outputs the transformer params of the other.
    - mask="checkerboard": the conditioner sees `x * m`, m = `checkerboard_mask(shape, parity)`,
      and the transformer applies where m is 0 (the log-det is summed there only).

    Glow's affine coupling is `image_coupling(shape, transformers.affine(), mask="channel")`.

    Args:
      shape: the event shape (H, W, C).
      transformer: the element-wise map applied to the transformed entries.
      mask: "checkerboard" or "channel".
      parity: which half passes unchanged (0 or 1).
      hidden_channels, num_blocks: size of the CNN conditioner.
      context_dim: size of the context vector for a conditional layer.

    Params: the conditioner's (flax) params.

    References: Dinh et al. (2016), RealNVP, https://arxiv.org/abs/1605.08803
    """
    shape = check_image_shape("image_coupling", shape)
    masks = {"checkerboard": checkerboard_mask, "channel": channel_mask}
    if mask not in masks:
        raise ValueError(f"image_coupling: mask must be 'checkerboard' or 'channel', got {mask!r}.")
    keep = masks[mask](shape, parity)
    name = f"{transformer.name}_{mask}_coupling"
    context_shape = None if context_dim is None else (context_dim,)
    split = _split_channels(keep) if mask == "channel" else _split_checkerboard(keep)
    net = resnet_cnn(
        split.conditioner_shape,
        split.transformed_channels * transformer.num_params,
        hidden_channels=hidden_channels,
        num_blocks=num_blocks,
        context_dim=context_dim,
    )

    def run(kernel, params, x, context):
        x = check_event(name, x, shape)
        context = check_context(name, context, context_shape)
        identity, rest = split.take(x)
        theta = net.apply(params, identity, context).astype(x.dtype)
        theta = theta.reshape(*rest.shape, transformer.num_params)
        y_rest, log_det = kernel(theta, rest)
        return split.merge(x, y_rest, log_det)

    def forward(params, x, context=None):
        return run(transformer.forward, params, x, context)

    def inverse(params, y, context=None):
        return run(transformer.inverse, params, y, context)

    return Bijector(net.init, forward, inverse, name)


class _Split(NamedTuple):
    """How a mask divides an event: `take(x) -> (conditioner input, transformed part)` and
    `merge(x, y_rest, log_det_elementwise) -> (y, log_det)`."""

    conditioner_shape: tuple[int, int, int]
    transformed_channels: int
    take: Callable
    merge: Callable


def _split_channels(keep: np.ndarray) -> _Split:
    """Static slices at C // 2 along the channel axis for a `channel_mask`."""
    height, width, channels = keep.shape
    half = channels // 2
    identity_first = bool(keep[0, 0, 0])

    def take(x):
        leading, trailing = x[..., :half], x[..., half:]
        return (leading, trailing) if identity_first else (trailing, leading)

    def merge(x, y_rest, log_det):
        identity = take(x)[0]
        parts = (identity, y_rest) if identity_first else (y_rest, identity)
        return jnp.concatenate(parts, axis=-1), jnp.sum(log_det)

    identity_channels = half if identity_first else channels - half
    return _Split((height, width, identity_channels), channels - identity_channels, take, merge)


def _split_checkerboard(keep: np.ndarray) -> _Split:
    """Multiplicative masking for a `checkerboard_mask`: the transformer runs on every entry
    and the kept entries are restored afterwards."""

    def take(x):
        return x * jnp.asarray(keep, x.dtype), x

    def merge(x, y_rest, log_det):
        return jnp.where(keep, x, y_rest), jnp.sum(jnp.where(keep, 0.0, log_det))

    return _Split(keep.shape, keep.shape[-1], take, merge)


def glow_step(
    shape,
    *,
    transformer: transformers.Transformer | None = None,
    hidden_channels: int = 64,
    num_blocks: int = 2,
    lu: bool = True,
    context_dim: int | None = None,
) -> Bijector:
    """One step of Glow: actnorm, an invertible 1x1 convolution, a channel coupling.

    The three apply in that order in the data -> base (`inverse`) direction, as in Glow,
    so the data-dependent init of actnorm standardises what enters the step. Starts at
    the identity (before data init).

    Args:
      shape: the event shape (H, W, C), C >= 2.
      transformer: the coupling's element-wise map; None for `transformers.affine()`,
        Glow's affine coupling (`transformers.additive()` gives its additive one).
      hidden_channels, num_blocks: size of the coupling's CNN conditioner.
      lu: LU-parametrised 1x1 convolution (`lu_linear`), else a plain one (`linear`).
      context_dim: size of the context vector for a conditional step.

    Params: (coupling params, 1x1 convolution params, actnorm params).

    References: Kingma & Dhariwal (2018), Glow, https://arxiv.org/abs/1807.03039
    """
    shape = check_image_shape("glow_step", shape)
    network = dict(hidden_channels=hidden_channels, num_blocks=num_blocks, context_dim=context_dim)
    transformer = transformers.affine() if transformer is None else transformer
    coupling = image_coupling(shape, transformer, mask="channel", **network)
    mixing = lu_linear(shape) if lu else linear(shape)
    return chain(coupling, mixing, actnorm(shape), name="glow_step")
