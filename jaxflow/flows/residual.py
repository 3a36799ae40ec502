"""Ready-made residual flow: contractive residual blocks (i-ResNet, Residual Flows) in one `lax.scan`.

Each scanned layer is, in the data -> base (density) direction, an optional ActNorm
followed by a block x -> x + g(x) with Lip(g) <= `lipschitz` < 1, the pattern of both
papers. Densities are explicit; sampling inverts every block by fixed-point iteration.

References: Behrmann et al. (2019), https://arxiv.org/abs/1811.00995;
Chen et al. (2019), https://arxiv.org/abs/1906.02735
"""

from __future__ import annotations

from collections.abc import Sequence

from jaxflow.bijectors.base import stack
from jaxflow.bijectors.residual import residual
from jaxflow.distributions import Flow
from jaxflow.flows._layers import check_layers, vector_flow, with_actnorm


def residual_flow(
    dim: int,
    *,
    layers: int = 8,
    hidden: Sequence[int] = (64, 64),
    activation: str = "lipswish",
    lipschitz: float = 0.9,
    log_det: str = "exact",
    num_series_terms: int | None = None,
    num_hutchinson_samples: int | None = None,
    roulette_stop_probability: float | None = None,
    actnorm: bool = True,
    context_dim: int | None = None,
    unroll: int | bool = 1,
) -> Flow:
    """`layers` contractive residual blocks, each after an ActNorm (data -> base), in one `lax.scan`.

    With a stochastic `log_det`, `Flow.log_prob` needs `key=` and returns an estimate
    (unbiased for "russian_roulette"); `Flow.sample` passes keys itself. Params do not
    depend on `log_det`: a flow trained with one can be evaluated with another.
    `jaxflow.initialize_from_data` sets the ActNorms from a data batch (through the
    `log_det="exact"` flow's bijector); fresh ActNorms are the identity.

    Args:
      dim: event size.
      layers: number of residual blocks.
      hidden: widths of each block's hidden layers.
      activation: "lipswish", "elu" or "tanh".
      lipschitz: bound on each block's Lip(g), in (0, 1).
      log_det: "exact" (dense Jacobian; small dim), "series" (truncated, biased) or
        "russian_roulette" (unbiased); see `jaxflow.bijectors.residual`.
      num_series_terms, num_hutchinson_samples, roulette_stop_probability: options of
        the stochastic estimators, passed to `jaxflow.bijectors.residual.residual` (which
        refuses those its `log_det` does not use). The
        roulette estimate's variance is finite where every block's actual Jacobian norm q
        at its input has q^2 < 1 - roulette_stop_probability; `lipschitz` only bounds q, so
        roulette_stop_probability < 1 - lipschitz^2 guarantees it. The defaults (0.9 and
        0.5, one extra term per estimate on average) favour speed and do not guarantee it:
        at the bound that needs a stop probability below 0.19 (over 4 extra terms).
      actnorm: put an ActNorm before every block (data -> base), as both papers do.
      context_dim: size of the context for a conditional flow (fed to every g).
      unroll: layers per loop iteration (`jaxflow.stack`; True: all).

    References: Behrmann et al. (2019), https://arxiv.org/abs/1811.00995;
    Chen et al. (2019), https://arxiv.org/abs/1906.02735
    """
    block = residual(
        dim, hidden=hidden, activation=activation, lipschitz=lipschitz, log_det=log_det,
        num_series_terms=num_series_terms, num_hutchinson_samples=num_hutchinson_samples,
        roulette_stop_probability=roulette_stop_probability, context_dim=context_dim,
    )
    layer = with_actnorm(block, dim) if actnorm else block
    stacked = stack(layer, check_layers(layers), name=f"residual_flow({log_det})", unroll=unroll)
    return vector_flow(stacked, dim, context_dim)
