"""Ready-made flows: each a `lax.scan` stack of one layer type, returned as a `Flow` ready to `init`.

The coupling and autoregressive builders share keyword-only options: `layers`, `hidden` (widths of
each layer's network), `context_dim` (conditional flows), `permute` ("random", "reverse" or "none"
between layers; coupling flows draw random permutations under which every entry is transformed by
some layer, and refuse "none" for more than one layer), `seed` (of the random permutations),
`unroll` (layers per loop iteration, see `jaxflow.stack`: compile time for run time) and `actnorm`
(an ActNorm before every layer on the data -> base side, as Glow and Flow++ put them; off by
default but in `flowpp`; set them from a data batch with `jaxflow.initialize_from_data` before
training: fresh ActNorms are the identity).
"""

from jaxflow.flows.autoregressive import iaf, maf, nsf_autoregressive
from jaxflow.flows.coupling import nice, nsf_coupling, realnvp
from jaxflow.flows.flowpp import flowpp
from jaxflow.flows.free_form import planar_flow, radial_flow, sylvester_flow
from jaxflow.flows.glow import glow
from jaxflow.flows.residual import residual_flow

nsf = nsf_coupling

__all__ = [
    "flowpp", "glow", "iaf", "maf", "nice", "nsf", "nsf_autoregressive", "nsf_coupling", "planar_flow", "radial_flow",
    "realnvp", "residual_flow", "sylvester_flow",
]
