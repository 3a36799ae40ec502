"""Cases for the free-form residual flows: planar, radial and Sylvester.

Tolerances: the kit's defaults (2e-3 in float32, 1e-9 in float64). The tanh planar
and Sylvester inverses are root finds to float precision, the leaky-ReLU planar and
radial inverses closed forms, so round trips and log-dets stay within a few hundred
ulps at the kit's param scales (measured over seeds, param scales <= 1 and input
scales <= 5: <= 2e-6 in float32 at param scale <= 0.5, <= 3e-13 in float64); a loose
float64 tolerance would hide a solver that stops early.
"""

from __future__ import annotations

from jaxflow.bijectors.planar import planar, radial
from jaxflow.bijectors.sylvester import sylvester
from jaxflow.testing.cases._registry import bijector_case, register

DIM = 4


for _name, _make in {
    "planar_tanh": lambda: planar(DIM),
    "planar_leaky_relu": lambda: planar(DIM, activation="leaky_relu", negative_slope=0.2),
    "radial": lambda: radial(DIM),
    "sylvester_orthogonal": lambda: sylvester(DIM, num_vectors=3),
    "sylvester_householder": lambda: sylvester(DIM, variant="householder", num_householder=3),
    "sylvester_triangular": lambda: sylvester(DIM, variant="triangular"),
}.items():
    register(_name)(bijector_case(_make))
