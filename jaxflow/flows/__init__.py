"""Ready-made flows: each a `lax.scan` stack of one layer type, returned as a `Flow` ready to `init`."""

from jaxflow.flows.autoregressive import iaf, maf, nsf_autoregressive
from jaxflow.flows.coupling import nice, nsf_coupling, realnvp

nsf = nsf_coupling

__all__ = ["iaf", "maf", "nice", "nsf", "nsf_autoregressive", "nsf_coupling", "realnvp"]
