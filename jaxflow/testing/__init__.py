"""A public test kit: `check_bijector` runs the contract checks; `CASES` lists every shipped bijector;
`with_noisy_log_det` makes a fast stochastic bijector for code that must handle estimated log-dets."""

from jaxflow.testing.cases import CASES, TOLERANCES, bijector_case, perturbed_params, register, tolerances_for
from jaxflow.testing.kit import check_bijector, default_tolerance
from jaxflow.testing.stochastic import with_noisy_log_det

__all__ = [
    "CASES", "TOLERANCES", "bijector_case", "check_bijector", "default_tolerance", "perturbed_params", "register",
    "tolerances_for", "with_noisy_log_det",
]
