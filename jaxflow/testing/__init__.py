"""A public test kit: `check_bijector` runs the contract checks; `CASES` lists every shipped bijector."""

from jaxflow.testing.cases import CASES, TOLERANCES, bijector_case, perturbed_params, register, tolerances_for
from jaxflow.testing.kit import check_bijector, default_tolerance

__all__ = [
    "CASES", "TOLERANCES", "bijector_case", "check_bijector", "default_tolerance", "perturbed_params", "register",
    "tolerances_for",
]
