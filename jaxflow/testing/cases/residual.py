"""Cases for the contractive residual flows (i-ResNet, Residual Flows).

Exact log-dets use the kit's default tolerances: `forward` iterates to rounding in the
input's dtype, so round trips and log-dets stay far within 2e-3 (float32) and 1e-9
(float64).

The stochastic cases return one random estimate per key, so their log-dets can differ
by the estimator's error from slogdet(jacfwd). They are registered with `log_det_tol` set
to a bound on that error for any key, params and input, which keeps every other check of
the kit sharp: round trips, forward and inverse estimates cancelling for one key, jit and
vmap giving the estimate of the same key, finite gradients. Whether the estimates are
right on average is tested in tests/test_residual.py over thousands of keys.
"""

from __future__ import annotations

import functools
import math

from jaxflow.bijectors.residual import DEFAULT_NUM_SERIES_TERMS, residual
from jaxflow.testing.cases._registry import bijector_case, register

DIM = 3
CONTEXT_DIM = 2
HIDDEN = (8,)
STOCHASTIC_LIPSCHITZ = 0.45  # below 1 - p = 0.5, so the roulette estimates are bounded


def single_estimate_error_bound(dim: int, lipschitz: float, num_terms: int, stop_probability: float = 0.0) -> float:
    """A bound on |estimate - log det(I + J)| for one key, with ||J||_2 <= q = lipschitz.

    Each Hutchinson term satisfies |v^T J^k v| <= |v|^2 q^k = dim q^k for Rademacher v, and
    |log det(I + J)| <= -dim log(1 - q). The roulette tail weights term k > n by
    (1 - p)^-(k - n), so it adds at most dim q^n sum_j r^j / (n + 1) = dim q^n r / ((1 - r)(n + 1))
    with r = q / (1 - p) < 1.
    """
    ratio = lipschitz / (1 - stop_probability)
    if ratio >= 1:
        raise ValueError(f"roulette estimates are unbounded for lipschitz {lipschitz} >= 1 - p.")
    head = sum(lipschitz**k / k for k in range(1, num_terms + 1))
    tail = lipschitz**num_terms * ratio / ((1 - ratio) * (num_terms + 1)) if stop_probability > 0 else 0.0
    return dim * (head + tail - math.log1p(-lipschitz))


def _stochastic(log_det):
    stop_probability = 0.5 if log_det == "russian_roulette" else None
    return residual(
        DIM, hidden=HIDDEN, lipschitz=STOCHASTIC_LIPSCHITZ, log_det=log_det, roulette_stop_probability=stop_probability
    )


def _tolerance(log_det):
    stop_probability = 0.5 if log_det == "russian_roulette" else 0.0
    return single_estimate_error_bound(DIM, STOCHASTIC_LIPSCHITZ, DEFAULT_NUM_SERIES_TERMS[log_det], stop_probability)


register("residual_exact")(bijector_case(lambda: residual(DIM, hidden=HIDDEN), shape=(DIM,)))
register("residual_conditional_exact")(
    bijector_case(lambda: residual(DIM, hidden=HIDDEN, context_dim=CONTEXT_DIM), shape=(DIM,), context_dim=CONTEXT_DIM)
)
for _log_det in ("series", "russian_roulette"):
    register(f"residual_{_log_det}", log_det_tol=_tolerance(_log_det))(
        bijector_case(functools.partial(_stochastic, _log_det), shape=(DIM,))
    )
