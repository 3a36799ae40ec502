"""Cases for the free-form, residual and Flow++ builders (their bijectors, tiny sizes).

Tolerances: the kit's defaults (2e-3 in float32, 1e-9 in float64) for every
deterministic builder. Their numerical inverses (tanh planar and Sylvester root finds,
residual fixed points, mixture-CDF root finds) run to a few machine epsilons per layer,
and two stacked layers keep round trips and log-dets far inside the defaults.

The Flow++ cases cap the param scale at 0.3. At scale 1, two stacked random mixture
couplings with ActNorms reach condition numbers of 1e7 to 1e8 (|x| = 1e-3 sent to
|y| = 4e7): sampling's root finds are exact to rounding in y, and the round trip loses
cond * eps (measured 5e-8 against a bound of 4e-2 in float64), more than 1e-9. At scale
0.5 every run of 60 hypothesis examples per case found such a draw (a newer hypothesis drew
one in the default 4: seed 20000 at input scale 2.5 lost 2.9e-7); at 0.3 seven runs of 60
per case stayed within the defaults. A single coupling at scale 1 is checked in
`cases/mixture_cdf.py`.

The stochastic residual flow returns one random log-det estimate per key. As in
`cases/residual.py`, it is registered with `log_det_tol` set to a bound on the
estimate's error for any key, params and input: the single-block bound times the
number of blocks (the ActNorms' log-dets are exact). Round trips, forward and inverse
estimates cancelling for one key, jit and vmap stay sharp; whether the estimates are
right on average is tested in tests/test_flow_builders_free_form.py.
"""

from __future__ import annotations

import functools

from jaxflow.bijectors.residual import DEFAULT_NUM_SERIES_TERMS
from jaxflow.flows.flowpp import flowpp
from jaxflow.flows.free_form import planar_flow, radial_flow, sylvester_flow
from jaxflow.flows.residual import residual_flow
from jaxflow.testing.cases._registry import bijector_case, perturbed_params, register
from jaxflow.testing.cases.residual import single_estimate_error_bound

DIM = 4
LAYERS = 2
CONTEXT_DIM = 2
HIDDEN = (8,)
STOCHASTIC_LIPSCHITZ = 0.45  # below 1 - p = 0.5, so the roulette estimates are bounded
STOP_PROBABILITY = 0.5
FLOWPP_MAX_PARAM_SCALE = 0.3  # see the module docstring


def _capped_perturbation(bijector, key, scale):
    return perturbed_params(bijector, key, min(scale, FLOWPP_MAX_PARAM_SCALE))


for _name, _make in {
    "planar_flow_tanh": lambda: planar_flow(DIM, layers=LAYERS),
    "planar_flow_leaky_relu": lambda: planar_flow(DIM, layers=LAYERS, activation="leaky_relu", negative_slope=0.2),
    "radial_flow": lambda: radial_flow(DIM, layers=LAYERS),
    "sylvester_flow_orthogonal": lambda: sylvester_flow(DIM, layers=LAYERS, num_vectors=3),
    "sylvester_flow_triangular": lambda: sylvester_flow(DIM, layers=LAYERS, variant="triangular"),
    "residual_flow_exact": lambda: residual_flow(DIM, layers=LAYERS, hidden=HIDDEN),
}.items():
    register(_name)(bijector_case(lambda make=_make: make().bijector))

for _name, _context_dim in (("flowpp_flow", None), ("flowpp_flow_conditional", CONTEXT_DIM)):
    _make = functools.partial(flowpp, DIM, layers=LAYERS, hidden=HIDDEN, components=3, context_dim=_context_dim)
    register(_name)(
        bijector_case(lambda make=_make: make().bijector, context_dim=_context_dim, perturb=_capped_perturbation)
    )

_roulette_flow = functools.partial(
    residual_flow, DIM, layers=LAYERS, hidden=HIDDEN, lipschitz=STOCHASTIC_LIPSCHITZ, log_det="russian_roulette",
    roulette_stop_probability=STOP_PROBABILITY,
)
_roulette_error_bound = LAYERS * single_estimate_error_bound(
    DIM, STOCHASTIC_LIPSCHITZ, DEFAULT_NUM_SERIES_TERMS["russian_roulette"], STOP_PROBABILITY
)
register("residual_flow_russian_roulette", log_det_tol=_roulette_error_bound)(
    bijector_case(lambda: _roulette_flow().bijector)
)
