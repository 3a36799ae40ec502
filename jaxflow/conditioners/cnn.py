"""A small residual CNN conditioner for image coupling layers (events of shape (H, W, C)).

The context, a vector, is broadcast over the spatial grid and joined as extra input
channels. The last convolution starts at zero, so every fresh coupling layer it conditions
is the identity; a fresh flow is then its other layers alone (for Glow, whose 1x1
convolutions and ActNorms also start at the identity, the identity itself).

References: He et al. (2016), https://arxiv.org/abs/1512.03385; Dinh et al. (2016),
RealNVP, https://arxiv.org/abs/1605.08803
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from jaxflow.bijectors._checks import (
    as_shape,
    check_context,
    check_context_dim,
    check_event,
    is_int_at_least,
    is_positive_int,
)
from jaxflow.conditioners.mlp import Conditioner

_KERNEL = (3, 3)


class ResidualBlock(nn.Module):
    """h + conv(relu(conv(relu(h)))), both 3x3 convolutions with `channels` outputs."""

    channels: int

    @nn.compact
    def __call__(self, h):
        residual = nn.Conv(self.channels, _KERNEL)(nn.relu(h))
        residual = nn.Conv(self.channels, _KERNEL)(nn.relu(residual))
        return h + residual


class ResNetCNN(nn.Module):
    """3x3 conv in, `num_blocks` residual blocks, relu, zero-initialised 3x3 conv out.

    Maps (H, W, C_in) to (H, W, out_channels). The few blocks are unrolled rather than
    run under `nn.scan`: an eager `init` would re-trace and re-compile a scanned body on
    every call (about 2 s each on CPU), and a flow's depth is scanned by `stack` anyway.
    """

    hidden_channels: int
    num_blocks: int
    out_channels: int

    @nn.compact
    def __call__(self, h):
        h = nn.Conv(self.hidden_channels, _KERNEL)(h)
        for _ in range(self.num_blocks):
            h = ResidualBlock(self.hidden_channels)(h)
        zeros = nn.initializers.zeros
        return nn.Conv(self.out_channels, _KERNEL, kernel_init=zeros, bias_init=zeros)(nn.relu(h))


def _with_context(h, context):
    """Appends the context vector to every pixel of h (H, W, C) as extra channels."""
    if context is None:
        return h
    grid = jnp.broadcast_to(context.astype(h.dtype), (*h.shape[:-1], context.shape[-1]))
    return jnp.concatenate([h, grid], axis=-1)


def resnet_cnn(
    in_shape,
    out_channels: int,
    *,
    hidden_channels: int = 64,
    num_blocks: int = 2,
    context_dim: int | None = None,
) -> Conditioner:
    """A residual CNN conditioner from images of `in_shape` to `out_channels` maps of the same size.

    Args:
      in_shape: (H, W, C_in), the shape of the conditioning image.
      out_channels: channels of the output, e.g. transformed channels * transformer params.
      hidden_channels: width of the hidden convolutions.
      num_blocks: number of residual blocks (0 gives conv-relu-conv).
      context_dim: size of the context vector for a conditional network.

    Returns:
      A `Conditioner` whose `apply(params, h, context=None)` maps h (H, W, C_in) to
      (H, W, out_channels).
    """
    in_shape = as_shape(in_shape)
    if len(in_shape) != 3:
        raise ValueError(f"resnet_cnn: expected in_shape (H, W, C), got {in_shape}.")
    if not (is_positive_int(out_channels) and is_positive_int(hidden_channels) and is_int_at_least(num_blocks, 0)):
        raise ValueError(
            f"resnet_cnn: need integers out_channels >= 1, hidden_channels >= 1 and num_blocks >= 0, "
            f"got {out_channels!r}, {hidden_channels!r} and {num_blocks!r}."
        )
    context_dim = check_context_dim("resnet_cnn", context_dim)
    context_shape = None if context_dim is None else (context_dim,)
    module = ResNetCNN(hidden_channels, num_blocks, out_channels)
    example = _with_context(jnp.zeros(in_shape), None if context_shape is None else jnp.zeros(context_shape))

    def init(key):
        return module.init(key, example)

    def apply(params, h, context=None):
        h = check_event("resnet_cnn", h, in_shape)
        context = check_context("resnet_cnn", context, context_shape)
        return module.apply(params, _with_context(h, context))

    return Conditioner(init, apply)
