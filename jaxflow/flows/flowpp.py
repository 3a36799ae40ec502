"""Ready-made Flow++-style coupling flow: logistic-mixture CDF couplings in one `lax.scan`.

Each scanned layer is, in the data -> base (density) direction, a reordering, an
optional ActNorm and a coupling whose transformer is the logistic-mixture CDF
y = a * logit(F(x)) + b. Densities are closed-form; sampling inverts each mixture CDF
by a bracketed root find. The conditioner is an MLP (the paper's gated
self-attention convnets and variational dequantisation are for images).

References: Ho et al. (2019), Flow++, https://arxiv.org/abs/1902.00275
"""

from __future__ import annotations

from collections.abc import Sequence

from jaxflow.bijectors._checks import check_dim
from jaxflow.bijectors.coupling import coupling, half_mask
from jaxflow.bijectors.mixture_cdf import logistic_mixture_cdf
from jaxflow.distributions import Flow
from jaxflow.flows._layers import permuted_stack, vector_flow


def flowpp(
    dim: int,
    *,
    layers: int = 8,
    hidden: Sequence[int] = (128, 128),
    components: int = 8,
    actnorm: bool = True,
    closed_form: str = "inverse",
    context_dim: int | None = None,
    permute: str = "random",
    seed: int = 0,
    unroll: int | bool = 1,
) -> Flow:
    """Logistic-mixture CDF couplings, each with an ActNorm and a reordering, in one `lax.scan`.

    With fresh params every coupling and ActNorm is the identity (zero-initialised
    conditioners), so the flow is its reorderings alone and its density is the standard
    normal base's; `jaxflow.initialize_from_data` sets the ActNorms from a data batch.

    Args:
      dim: event size, at least 2.
      layers: number of coupling layers.
      hidden: widths of each conditioner MLP.
      components: logistics per mixture (3 * components + 2 conditioner outputs per entry).
      actnorm: put an ActNorm before every coupling (data -> base), as Flow++ does.
      closed_form: "inverse" (closed-form density, sampling by root finding) or
        "forward" (the reverse, e.g. for reverse-KL training).
      context_dim: size of the context for a conditional flow (fed to every conditioner).
      permute: reordering after each layer: "random", "reverse" or "none".
      seed: seed of the random permutations (configuration, not params).
      unroll: layers per loop iteration (see `jaxflow.stack`).

    References: Ho et al. (2019), https://arxiv.org/abs/1902.00275
    """
    dim = check_dim("flowpp", dim, 2, " (its couplings split the event; for dim 1 use an autoregressive flow)")
    transformer = logistic_mixture_cdf(components, closed_form=closed_form)

    make_layer = lambda: coupling(dim, transformer, hidden=hidden, context_dim=context_dim)  # noqa: E731
    stacked = permuted_stack(
        make_layer, dim, layers, permute=permute, seed=seed, unroll=unroll, transformed=~half_mask(dim),
        actnorm=actnorm,
    )
    return vector_flow(stacked, dim, context_dim)

