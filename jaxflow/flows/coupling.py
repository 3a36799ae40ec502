"""Ready-made coupling flows: NICE, RealNVP and the coupling neural spline flow."""

from __future__ import annotations

from collections.abc import Sequence

from jaxflow.bijectors import transformers
from jaxflow.bijectors.base import chain
from jaxflow.bijectors.coupling import coupling, half_mask
from jaxflow.bijectors.elementwise import scale
from jaxflow.bijectors.spline import rational_quadratic_spline
from jaxflow.distributions import Flow
from jaxflow.flows._layers import permuted_stack, vector_flow


def _coupling_flow(dim, transformer, layers, hidden, context_dim, permute, seed, unroll) -> Flow:
    if dim < 2:
        raise ValueError(f"coupling flows need dim >= 2, got {dim}; use an autoregressive or element-wise flow.")
    make_layer = lambda: coupling(dim, transformer, hidden=hidden, context_dim=context_dim)  # noqa: E731
    stacked = permuted_stack(
        make_layer, dim, layers, permute=permute, seed=seed, unroll=unroll, transformed=~half_mask(dim)
    )
    return vector_flow(stacked, dim, context_dim)


def nice(
    dim: int, *, layers: int = 8, hidden: Sequence[int] = (128, 128), context_dim: int | None = None,
    permute: str = "random", seed: int = 0, unroll: int | bool = 1,
) -> Flow:
    """NICE: additive (volume-preserving) couplings with a learnable diagonal scale at the end.

    References: Dinh et al. (2014), https://arxiv.org/abs/1410.8516
    """
    flow = _coupling_flow(dim, transformers.additive(), layers, hidden, context_dim, permute, seed, unroll)
    return flow._replace(bijector=chain(flow.bijector, scale(dim), name="nice"))


def realnvp(
    dim: int, *, layers: int = 8, hidden: Sequence[int] = (128, 128), context_dim: int | None = None,
    permute: str = "random", seed: int = 0, unroll: int | bool = 1,
) -> Flow:
    """RealNVP: affine couplings, each followed by a permutation, in one `lax.scan`.

    References: Dinh et al. (2016), https://arxiv.org/abs/1605.08803
    """
    return _coupling_flow(dim, transformers.affine(), layers, hidden, context_dim, permute, seed, unroll)


def nsf_coupling(
    dim: int, *, layers: int = 8, hidden: Sequence[int] = (128, 128), bins: int = 8, bound: float = 4.0,
    context_dim: int | None = None, permute: str = "random", seed: int = 0, unroll: int | bool = 1,
) -> Flow:
    """Neural spline flow with rational-quadratic spline couplings (identity tails outside +-bound).

    References: Durkan et al. (2019), https://arxiv.org/abs/1906.04032
    """
    spline = rational_quadratic_spline(num_bins=bins, bound=bound)
    return _coupling_flow(dim, spline, layers, hidden, context_dim, permute, seed, unroll)
