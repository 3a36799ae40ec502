"""Ready-made free-form flows: planar, radial and Sylvester layers, each stacked in one `lax.scan`.

These layers act on the whole event at once (no coupling split, no masks), have no
context input, and are closed-form in the forward (base -> data) direction, which
makes them flows for variational inference: samples and their densities come from
one forward pass. Densities of given data invert every layer numerically (tanh
planar, Sylvester) or in closed form (leaky-ReLU planar, radial).

References: Rezende & Mohamed (2015), https://arxiv.org/abs/1505.05770;
van den Berg et al. (2018), https://arxiv.org/abs/1803.05649
"""

from __future__ import annotations

import numpy as np

from jaxflow.bijectors._checks import check_dim
from jaxflow.bijectors.base import chain, stack
from jaxflow.bijectors.permutation import reverse
from jaxflow.bijectors.planar import planar, radial
from jaxflow.bijectors.sylvester import sylvester
from jaxflow.distributions import Flow
from jaxflow.flows._layers import check_layers, vector_flow


def planar_flow(
    dim: int, *, layers: int = 16, activation: str = "tanh", negative_slope: float | None = None,
    unroll: int | bool = 1,
) -> Flow:
    """`layers` planar layers y = x + u_hat h(w . x + b), in one `lax.scan`.

    Args:
      dim: event size.
      layers: number of planar layers.
      activation: "tanh" (density by a 1-D root find per layer) or "leaky_relu"
        (density in closed form).
      negative_slope: the leaky ReLU's slope for negative inputs, in [0, 1] (default 0.01);
        refused with tanh.
      unroll: layers per loop iteration (`jaxflow.stack`; True: all).

    References: Rezende & Mohamed (2015), https://arxiv.org/abs/1505.05770
    """
    dim = check_dim("planar_flow", dim)
    layer = planar(dim, activation=activation, negative_slope=negative_slope)
    stacked = stack(layer, check_layers(layers), name=f"planar_flow({activation})", unroll=unroll)
    return vector_flow(stacked, dim, None)


def radial_flow(dim: int, *, layers: int = 16, unroll: int | bool = 1) -> Flow:
    """`layers` radial layers y = x + beta (x - x0) / (alpha + |x - x0|), in one `lax.scan`.

    `unroll`: layers per loop iteration (`jaxflow.stack`; True: all).

    References: Rezende & Mohamed (2015), https://arxiv.org/abs/1505.05770
    """
    dim = check_dim("radial_flow", dim)
    return vector_flow(stack(radial(dim), check_layers(layers), name="radial_flow", unroll=unroll), dim, None)


def sylvester_flow(
    dim: int,
    *,
    layers: int = 8,
    variant: str = "orthogonal",
    num_vectors: int | None = None,
    num_householder: int | None = None,
    unroll: int | bool = 1,
) -> Flow:
    """`layers` Sylvester layers z' = z + Q R tanh(R~ Q^T z + b), in one `lax.scan`.

    The "triangular" variant fixes Q to a permutation; as in the paper, it alternates
    between the identity and the reversal from one layer to the next (each scanned
    layer is an identity-Q Sylvester layer followed by a reversal), so that
    consecutive layers are triangular in opposite orders.

    Args:
      dim: event size.
      layers: number of Sylvester layers.
      variant: "orthogonal" (Q from a learnt (dim, M) matrix), "householder"
        (Q from learnt reflections) or "triangular" (Q a permutation, M = dim).
      num_vectors: M, hidden units per layer, 1 <= M <= dim (default dim).
      num_householder: reflections per layer for "householder" (default dim).
      unroll: layers per loop iteration (`jaxflow.stack`; True: all).

    References: van den Berg et al. (2018), https://arxiv.org/abs/1803.05649
    """
    dim = check_dim("sylvester_flow", dim)
    options = {"variant": variant, "num_vectors": num_vectors, "num_householder": num_householder}
    if variant == "triangular":
        layer = sylvester(dim, permutation=np.arange(dim), **options)
        layer = chain(layer, reverse(), name="sylvester_triangular_reversed")
    else:
        layer = sylvester(dim, **options)
    stacked = stack(layer, check_layers(layers), name=f"sylvester_flow({variant})", unroll=unroll)
    return vector_flow(stacked, dim, None)
