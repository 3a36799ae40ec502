"""Adapters to and from other JAX libraries: `distrax` bijectors and distributions here, NumPyro in
`jaxflow.interop.numpyro` (imported on its own, as it needs numpyro installed)."""

from jaxflow.interop.distrax import (
    from_distrax_bijector,
    from_distrax_distribution,
    to_distrax_bijector,
    to_distrax_distribution,
)

__all__ = ["from_distrax_bijector", "from_distrax_distribution", "to_distrax_bijector", "to_distrax_distribution"]
