"""jaxflow: normalising flows as pure JAX functions.

    import jaxflow as jf
    flow = jf.Flow(jf.standard_normal(2), jf.stack(jf.bijectors.affine(2), 4))
    params = flow.init(jax.random.key(0))
    x, log_q = flow.sample_and_log_prob(params, jax.random.key(1), (512,))
"""

from jaxflow import bijectors, conditioners, flows, latent, validation
from jaxflow.bijectors import Bijector, chain, freeze, ignore_context, initialize_from_data, invert, stack
from jaxflow.distributions import Distribution, Flow, diagonal_normal, standard_normal

__version__ = "0.1.0"

__all__ = [
    "Bijector", "Distribution", "Flow", "bijectors", "chain", "conditioners", "diagonal_normal", "flows", "freeze",
    "ignore_context", "initialize_from_data", "invert", "latent", "stack", "standard_normal", "validation",
]
