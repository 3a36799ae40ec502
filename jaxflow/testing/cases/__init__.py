"""Every shipped bijector as a ready-to-check case.

Each module of this package registers its family's cases with `register`; a new
bijector joins with one registered function (or one line in a family's table).
"""

import importlib
import pkgutil

from jaxflow.testing.cases._registry import (
    CASES,
    TOLERANCES,
    bijector_case,
    normal_input,
    perturbed_params,
    register,
    tolerances_for,
)

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "CASES", "TOLERANCES", "bijector_case", "normal_input", "perturbed_params", "register", "tolerances_for",
]
