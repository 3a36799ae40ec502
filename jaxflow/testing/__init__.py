"""A public test kit: `check_bijector` runs the contract checks; `CASES` lists every shipped bijector."""

from jaxflow.testing.cases import CASES, TOLERANCES, perturbed_params, register
from jaxflow.testing.kit import check_bijector, default_tolerance

__all__ = ["CASES", "TOLERANCES", "check_bijector", "default_tolerance", "perturbed_params", "register"]
