"""Cases for the ready-made image flows (their bijectors, tiny sizes)."""

from __future__ import annotations

from jaxflow.flows.glow import glow
from jaxflow.testing.cases._registry import register
from jaxflow.testing.cases.image import CONTEXT_DIM, IMAGE, NETWORK, _case

# One case, on the options the `multiscale_glow` case leaves out: additive couplings, plain
# 1x1 convolutions, the learned prior and a context.
register("glow_flow_additive_learned_prior_conditional")(
    _case(
        lambda: glow(
            IMAGE, levels=2, steps_per_level=1, coupling="additive", lu=False, learned_prior=True,
            context_dim=CONTEXT_DIM, **NETWORK,
        ).bijector,
        context_dim=CONTEXT_DIM,
        depth=2,
    )
)
