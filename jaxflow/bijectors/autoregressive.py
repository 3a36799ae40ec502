"""Masked autoregressive layers: an element-wise map of each entry, conditioned on the entries before it.

    x[i] = transformer.inverse(theta[i], y[i]),   theta = made(y, context)

In the MAF orientation the density direction (`inverse`, data -> base) is one MADE
pass; sampling (`forward`) solves for y one position of the order per pass, `dim`
passes in a `lax.fori_loop`. IAF is the same layer inverted: cheap sampling, slow density.

References: Papamakarios et al. (2017) MAF, https://arxiv.org/abs/1705.07057;
Kingma et al. (2016) IAF, https://arxiv.org/abs/1606.04934
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxflow.bijectors import transformers
from jaxflow.bijectors._checks import check_context, check_event
from jaxflow.bijectors.base import Bijector, invert
from jaxflow.conditioners.made import made
from jaxflow.conditioners.mlp import Conditioner


def masked_autoregressive(
    dim: int,
    transformer: transformers.Transformer,
    *,
    hidden: Sequence[int] = (128, 128),
    order=None,
    context_dim: int | None = None,
    conditioner: Callable[..., Conditioner] | None = None,
    name: str | None = None,
) -> Bijector:
    """A masked autoregressive flow (MAF) layer on vectors of size `dim`.

    `inverse` (density) costs one conditioner pass, `forward` (sampling) `dim` passes.

    Args:
      dim: event size.
      transformer: the element-wise map; its params for entry i come from the
        entries before i in `order`.
      hidden: widths of the default MADE conditioner.
      order: permutation of 0..dim-1, `order[i]` the position of entry i in the
        autoregressive order; default the identity.
      context_dim: size of the context vector for a conditional layer.
      conditioner: optional factory `(dim, num_params, *, order, context_dim) ->
        Conditioner` whose output for entry i depends only on the entries before
        it (e.g. `functools.partial(made, hidden_degrees="random", key=k)`);
        replaces the default `made(..., hidden=hidden)`.
      name: for error messages.
    """
    name = name or f"{transformer.name}_masked_autoregressive"
    make = conditioner or functools.partial(made, hidden=hidden)
    net = make(dim, transformer.num_params, order=order, context_dim=context_dim)
    context_shape = None if context_dim is None else (context_dim,)

    def raw_params(theta, dtype):
        if theta.shape != (dim, transformer.num_params):
            raise ValueError(
                f"{name}: the conditioner must return raw params of shape ({dim}, {transformer.num_params}), one row "
                f"per dimension, got shape {theta.shape}."
            )
        return theta.astype(dtype)

    def forward(params, x, context=None):
        x, context = check_event(name, x, (dim,)), check_context(name, context, context_shape)

        def solve(theta_of):
            return lambda _, y: transformer.forward(raw_params(theta_of(y, context), y.dtype), x)[0]

        # After k passes the first k positions of the order are exact. The passes run in a few
        # loops, each with the conditioner bound for the positions its passes solve (MADE then
        # skips the hidden units they do not read) and its params-only work done before the loop.
        y = x
        for start, stop in _pass_groups(dim - 1):
            y = jax.lax.fori_loop(start, stop, solve(net.bound(params, positions=stop)), y)
        # The last pass solves the last position and gives every log-det.
        y, log_det = transformer.forward(raw_params(net.bound(params)(y, context), y.dtype), x)
        return y, jnp.sum(log_det)

    def inverse(params, y, context=None):
        y, context = check_event(name, y, (dim,)), check_context(name, context, context_shape)
        x, log_det = transformer.inverse(raw_params(net.apply(params, y, context), y.dtype), y)
        return x, jnp.sum(log_det)

    return Bijector(net.init, forward, inverse, name)


def _pass_groups(passes: int, groups: int = 4) -> list[tuple[int, int]]:
    """`range(passes)` as at most `groups` contiguous (start, stop) ranges of near-equal length.

    With MADE, the hidden-to-hidden product of a pass grows with the square of the positions
    it solves: for evenly spread degrees, four loops do 0.47 of one loop's work, and more
    loops would save little more (0.33 at the limit) while compiling one more body each.
    """
    bounds = np.linspace(0, passes, min(groups, passes) + 1).round().astype(int)
    return [(int(start), int(stop)) for start, stop in itertools.pairwise(bounds)]


def inverse_autoregressive(
    dim: int, transformer: transformers.Transformer, *, name: str | None = None, **kwargs
) -> Bijector:
    """An inverse autoregressive flow (IAF) layer: `forward` (sampling) in one pass, `inverse` in `dim`.

    It is `invert(masked_autoregressive(...))`; see `masked_autoregressive` for the arguments.
    """
    name = name or f"{transformer.name}_inverse_autoregressive"
    return invert(masked_autoregressive(dim, transformer, name=name, **kwargs))._replace(name=name)
