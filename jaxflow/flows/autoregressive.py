"""Ready-made autoregressive flows: MAF, IAF and the autoregressive neural spline flow."""

from __future__ import annotations

from collections.abc import Sequence

from jaxflow.bijectors import transformers
from jaxflow.bijectors._checks import check_dim
from jaxflow.bijectors.autoregressive import inverse_autoregressive, masked_autoregressive
from jaxflow.bijectors.spline import rational_quadratic_spline
from jaxflow.distributions import Flow
from jaxflow.flows._layers import permuted_stack, vector_flow


def _autoregressive_flow(
    layer_fn, dim, transformer, layers, hidden, context_dim, permute, seed, unroll, actnorm
) -> Flow:
    dim = check_dim("autoregressive flows", dim)
    make_layer = lambda: layer_fn(dim, transformer, hidden=hidden, context_dim=context_dim)  # noqa: E731
    stacked = permuted_stack(make_layer, dim, layers, permute=permute, seed=seed, unroll=unroll, actnorm=actnorm)
    return vector_flow(stacked, dim, context_dim)


def maf(
    dim: int, *, layers: int = 5, hidden: Sequence[int] = (128, 128), context_dim: int | None = None,
    permute: str = "random", seed: int = 0, unroll: int | bool = 1, actnorm: bool = False,
) -> Flow:
    """Masked autoregressive flow: one-pass density, `dim`-pass sampling.

    Each layer's density step is `transformers.exp_affine`, x = y exp(-s) + shift with a bounded
    log-scale s (see there for why it, not `affine`, and what it measured).

    References: Papamakarios et al. (2017), https://arxiv.org/abs/1705.07057
    """
    return _autoregressive_flow(
        masked_autoregressive, dim, transformers.exp_affine(), layers, hidden, context_dim, permute, seed, unroll,
        actnorm,
    )


def iaf(
    dim: int, *, layers: int = 5, hidden: Sequence[int] = (128, 128), context_dim: int | None = None,
    permute: str = "reverse", seed: int = 0, unroll: int | bool = 1, actnorm: bool = False,
) -> Flow:
    """Inverse autoregressive flow (affine): one-pass sampling with its density, `dim`-pass density of data.

    The flow for variational inference and for distillation students. It reverses the order
    between layers, as the paper does, where the other autoregressive builders permute at random:
    a posterior written in its model's order (global variables first) keeps them first in every
    other layer, which fitted Neal's funnel far better (README, the posteriors table). `seed`
    draws random permutations only: it changes nothing unless `permute="random"`.

    References: Kingma et al. (2016), https://arxiv.org/abs/1606.04934
    """
    return _autoregressive_flow(
        inverse_autoregressive, dim, transformers.affine(), layers, hidden, context_dim, permute, seed, unroll,
        actnorm,
    )


def nsf_autoregressive(
    dim: int, *, layers: int = 5, hidden: Sequence[int] = (128, 128), bins: int = 8, bound: float = 4.0,
    context_dim: int | None = None, permute: str = "random", seed: int = 0, inverse: bool = False,
    unroll: int | bool = 1, actnorm: bool = False,
) -> Flow:
    """Autoregressive neural spline flow; `inverse=True` gives the IAF orientation (fast sampling).

    References: Durkan et al. (2019), https://arxiv.org/abs/1906.04032
    """
    layer_fn = inverse_autoregressive if inverse else masked_autoregressive
    spline = rational_quadratic_spline(num_bins=bins, bound=bound)
    return _autoregressive_flow(layer_fn, dim, spline, layers, hidden, context_dim, permute, seed, unroll, actnorm)
