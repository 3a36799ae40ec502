"""Cases for the ready-made builders of `jaxflow.flows` (their bijectors, tiny sizes)."""

from __future__ import annotations

from jaxflow import flows
from jaxflow.testing.cases._registry import bijector_case, register

DIM = 4
SMALL = dict(layers=2, hidden=(8,))
# Spline slopes reach min_derivative (1e-3) at raw params of scale 1: two stacked inverses lose
# up to ~1e7 ulps in float64 (measured 1.8e-9 relative), above the kit's default 1e-9.
SPLINE_TOLERANCE = dict(tol={"float64": 1e-8})

for _name, _make, _tolerance in [
    ("nice_flow", lambda: flows.nice(DIM, **SMALL), {}),
    ("realnvp_flow", lambda: flows.realnvp(DIM, **SMALL), {}),
    ("nsf_coupling_flow", lambda: flows.nsf_coupling(DIM, bins=4, bound=2.0, **SMALL), SPLINE_TOLERANCE),
    ("maf_flow", lambda: flows.maf(DIM, **SMALL), {}),
    ("iaf_flow", lambda: flows.iaf(DIM, **SMALL), {}),
    ("nsf_autoregressive_flow", lambda: flows.nsf_autoregressive(DIM, bins=4, bound=2.0, **SMALL), SPLINE_TOLERANCE),
]:
    register(_name, **_tolerance)(bijector_case(lambda make=_make: make().bijector))

register("realnvp_flow_conditional")(
    bijector_case(lambda: flows.realnvp(DIM, context_dim=2, **SMALL).bijector, context_dim=2)
)
register("maf_flow_conditional")(bijector_case(lambda: flows.maf(DIM, context_dim=2, **SMALL).bijector, context_dim=2))
