"""Every shipped bijector as a ready-to-check case.

Each module of this package registers its family's cases with `register` when it is
imported below; a new bijector joins with one registered function (or one line in a
family's table), a new family with one more module in that import.
"""

from jaxflow.testing.cases import (  # noqa: F401  (imported to register their cases)
    autoregressive,
    core,
    flows,
    flows_free_form,
    flows_image,
    free_form,
    image,
    interop,
    mixture_cdf,
    residual,
    spline,
)
from jaxflow.testing.cases._registry import (
    CASES,
    TOLERANCES,
    bijector_case,
    normal_input,
    perturbed_params,
    register,
    tolerances_for,
)

__all__ = [
    "CASES", "TOLERANCES", "bijector_case", "normal_input", "perturbed_params", "register", "tolerances_for",
]
