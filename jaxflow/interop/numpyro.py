"""numpyro interop: jaxflow flows as numpyro distributions, transforms and autoguides.

    FlowDistribution(flow, params, context=None, *, key=None)   -> numpyro Distribution
    BijectorTransform(bijector, params, event_shape, context=None) -> numpyro Transform
    AutoFlowGuide(model, flow)                                   -> numpyro AutoContinuous guide

A `FlowDistribution` is a sample site like any other inside a numpyro model (a
learned prior, or a conditional flow as a likelihood inside a plate).
`AutoFlowGuide` fits any jaxflow flow on the model's flattened, unconstrained
latent space by SVI, as `AutoIAFNormal` fits numpyro's own IAF: numpyro's
`AutoContinuous` flattens the latent sites and maps each back to its support.

This module imports numpyro, so import it explicitly:
`from jaxflow.interop import numpyro as jfn`.

References: Kucukelbir et al. (2017), ADVI, https://arxiv.org/abs/1603.00788;
Hoffman et al. (2019), NeuTra, https://arxiv.org/abs/1903.03704.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
from numpyro.distributions import Distribution as NumpyroDistribution
from numpyro.distributions import constraints
from numpyro.distributions.transforms import Transform
from numpyro.infer.autoguide import AutoContinuous
from numpyro.infer.initialization import init_to_uniform

from jaxflow.bijectors._checks import as_shape, batch_shape_of, check_event
from jaxflow.bijectors.base import Bijector, transform
from jaxflow.distributions import Flow
from jaxflow.interop._common import check_key, check_shape_preserving

FlowOrFactory = Flow | Callable[[int], Flow]


def _real_support(event_ndim: int) -> constraints.Constraint:
    """Unconstrained events with `event_ndim` axes."""
    return constraints.real if event_ndim == 0 else constraints.independent(constraints.real, event_ndim)



class FlowDistribution(NumpyroDistribution):
    """A jaxflow `Flow` with fixed params, seen as a numpyro distribution.

    `event_shape` is the flow's; `batch_shape` is `()`, or the leading axes of a
    batch of contexts for a conditional flow (one context per batch element, so
    the distribution can sit inside a `numpyro.plate`). Sampling runs the flow's
    forward pass once and hands its log-density to numpyro as an intermediate,
    so SVI never inverts a guide's flow; `log_prob` of other values runs the
    inverse pass.

    Args:
      flow: the jaxflow flow.
      params: its params, as made by `flow.init` (arrays may be traced).
      context: for a conditional flow, one context of `flow.context_shape` or a
        batch of them of shape (*batch_shape, *context_shape).
      key: PRNG key that `log_prob` hands to stochastic bijectors.
      validate_args: numpyro's argument validation flag.
    """

    arg_constraints: ClassVar[dict] = {}
    pytree_data_fields = ("params", "context", "key")
    pytree_aux_fields = ("flow",)

    def __init__(self, flow: Flow, params, context=None, *, key=None, validate_args=None):
        if not isinstance(flow, Flow):
            raise TypeError(f"FlowDistribution: expected a jaxflow Flow, got {type(flow).__name__}.")
        self.flow, self.params, self.context, self.key = flow, params, context, key
        super().__init__(_context_batch_shape(flow, context), flow.event_shape, validate_args=validate_args)

    @property
    def support(self) -> constraints.Constraint:
        return _real_support(len(self.event_shape))

    def sample_with_intermediates(self, key, sample_shape=()):
        """Draws (*sample_shape, *batch_shape, *event_shape) samples; intermediates = [their log q]."""
        shape = tuple(sample_shape) + self.batch_shape
        x, log_q = self.flow.sample_and_log_prob(self.params, key, shape, self._context_for(shape))
        return x, [log_q]

    def sample(self, key, sample_shape=()):
        return self.sample_with_intermediates(key, sample_shape)[0]

    def log_prob(self, value, intermediates=None):
        """log q(value) for value of shape (*batch, *event_shape), batch broadcasting with batch_shape."""
        if intermediates:
            return intermediates[0]
        value = check_event("FlowDistribution.log_prob", value, None, what="value")
        if self._validate_args:
            self._validate_sample(value)
        value_batch_shape = batch_shape_of("FlowDistribution", value.shape, self.event_shape)
        batch_shape = np.broadcast_shapes(value_batch_shape, self.batch_shape)
        value = jnp.broadcast_to(value, batch_shape + self.event_shape)
        check_key(self.flow.bijector, self.key, "FlowDistribution", "numpyro")
        return self.flow.log_prob(self.params, value, self._context_for(batch_shape), key=self.key)

    def _context_for(self, batch_shape):
        """The context, broadcast to one per element of `batch_shape` if it is batched."""
        if not self.batch_shape:
            return self.context
        return jnp.broadcast_to(self.context, batch_shape + self.flow.context_shape)


def _context_batch_shape(flow: Flow, context) -> tuple[int, ...]:
    """Leading axes of a batch of contexts (`()` for none or one); checks the context matches the flow."""
    if flow.context_shape is None:
        if context is not None:
            raise ValueError(
                f"FlowDistribution: the flow is unconditional but got a context of shape {jnp.shape(context)}."
            )
        return ()
    if context is None:
        raise ValueError(f"FlowDistribution: the flow is conditional; pass a context of shape {flow.context_shape}.")
    return batch_shape_of("FlowDistribution context", jnp.shape(context), flow.context_shape)


class BijectorTransform(Transform):
    """A jaxflow bijector with fixed params, seen as a numpyro `Transform` on batched events.

    Calling it runs `bijector.forward` on inputs of shape (*batch, *event_shape);
    `log_abs_det_jacobian` returns log-dets of shape `batch`, reusing those of the
    forward call when numpyro passes them back as intermediates.

    Args:
      bijector: a deterministic jaxflow bijector on one event of `event_shape`.
      params: its params.
      event_shape: shape of one event.
      context: one context, shared by every event, for a conditional bijector.
    """

    def __init__(self, bijector: Bijector, params, event_shape, context=None):
        if bijector.stochastic:
            raise ValueError(
                f"BijectorTransform: {bijector.name} estimates its log-det stochastically; "
                "numpyro transforms take no PRNG key, so only deterministic bijectors can be wrapped."
            )
        event_shape = as_shape(event_shape)
        check_shape_preserving("BijectorTransform", bijector, params, event_shape, context)
        self.bijector, self.params, self.event_shape, self.context = bijector, params, event_shape, context

    @property
    def domain(self) -> constraints.Constraint:
        return _real_support(len(self.event_shape))

    codomain = domain

    def __call__(self, x):
        return self.call_with_intermediates(x)[0]

    def call_with_intermediates(self, x):
        return self._apply("forward", x)

    def _inverse(self, y):
        return self._apply("inverse", y)[0]

    def log_abs_det_jacobian(self, x, y, intermediates=None):
        del y
        return self._apply("forward", x)[1] if intermediates is None else intermediates

    def _apply(self, direction, x):
        name = f"BijectorTransform({self.bijector.name})"
        x = check_event(name, x, None)
        batch_shape = batch_shape_of(name, x.shape, self.event_shape)
        one = lambda event: transform(self.bijector, direction, self.params, event, self.context)  # noqa: E731
        y, log_det = jax.vmap(one)(x.reshape(-1, *self.event_shape))
        return y.reshape(x.shape), log_det.reshape(batch_shape)

    def tree_flatten(self):
        aux = (("params", "context"), {"bijector": self.bijector, "event_shape": self.event_shape})
        return (self.params, self.context), aux


def _unchanged(params, x, context=None):
    del params, context
    return x, jnp.zeros((), x.dtype)


_IDENTITY = Bijector(lambda key: (), _unchanged, _unchanged, "identity")


class AutoFlowGuide(AutoContinuous):
    """An autoguide whose posterior over the unconstrained latents is a jaxflow flow.

    The flow's params are one numpyro param site, `f"{prefix}_flow"`, holding the
    whole params pytree, so `SVI` with any numpyro or optax optimiser trains them;
    the flow starts where `flow.init` puts it (the ready-made flows start at the
    identity, so q starts at N(0, I) in the unconstrained space, as AutoIAFNormal).

        guide = AutoFlowGuide(model, lambda dim: jaxflow.flows.realnvp(dim, hidden=(32, 32)))
        svi = SVI(model, guide, optax.adam(1e-3), Trace_ELBO())

    `sample_posterior`, `get_posterior` (the flow over the unconstrained latents)
    and Monte Carlo `quantiles` / `median` work after training; with a
    parameter-free base (every ready-made flow), `get_base_dist` and
    `get_transform` make it usable by `numpyro.infer.reparam.NeuTraReparam`.

    Args:
      model: a numpyro model with continuous latent sites and no local latents.
      flow: a `Flow` with event shape (latent_dim,), or a function `latent_dim -> Flow`
        (the model's unconstrained latent size is known only once the guide runs).
      prefix: prefix of the guide's site names.
      init_loc_fn: numpyro init strategy used to trace the model.
    """

    def __init__(self, model, flow: FlowOrFactory, *, prefix: str = "auto", init_loc_fn=init_to_uniform):
        if not (isinstance(flow, Flow) or callable(flow)):
            raise TypeError(
                f"AutoFlowGuide: expected a jaxflow Flow or a function latent_dim -> Flow, got {type(flow).__name__}."
            )
        self._flow_or_factory = flow
        self.flow = None
        super().__init__(model, prefix=prefix, init_loc_fn=init_loc_fn)

    @property
    def param_name(self) -> str:
        """The numpyro param site holding the flow's params."""
        return f"{self.prefix}_flow"

    def _setup_prototype(self, *args, **kwargs):
        super()._setup_prototype(*args, **kwargs)
        self.flow = _guide_flow(self._flow_or_factory, self.latent_dim)

    def _get_posterior(self):
        return FlowDistribution(self.flow, numpyro.param(self.param_name, self.flow.init))

    def get_posterior(self, params) -> FlowDistribution:
        """The fitted flow over the flat unconstrained latent vector."""
        return FlowDistribution(self.flow, params[self.param_name])

    def get_base_dist(self) -> FlowDistribution:
        base_params = self.flow.base.init(jax.random.key(0))
        self._check_base_is_fixed(base_params)
        return FlowDistribution(Flow(self.flow.base, _IDENTITY), {"base": base_params, "bijector": ()})

    def get_transform(self, params) -> BijectorTransform:
        flow_params = params[self.param_name]
        self._check_base_is_fixed(flow_params["base"])
        return BijectorTransform(self.flow.bijector, flow_params["bijector"], self.flow.event_shape)

    def quantiles(self, params, quantiles, *, rng_key=None, num_samples: int = 4096) -> dict:
        """Monte Carlo quantiles of every latent site from `num_samples` posterior draws.

        Returns a dict of arrays of shape (*jnp.shape(quantiles), *site_shape).
        """
        rng_key = jax.random.key(0) if rng_key is None else rng_key
        draws = self.sample_posterior(rng_key, params, sample_shape=(num_samples,))
        return {name: jnp.quantile(value, jnp.asarray(quantiles), axis=0) for name, value in draws.items()}

    def median(self, params, *, rng_key=None, num_samples: int = 4096) -> dict:
        """Monte Carlo median of every latent site."""
        return self.quantiles(params, 0.5, rng_key=rng_key, num_samples=num_samples)

    def _check_base_is_fixed(self, base_params):
        if jax.tree.leaves(base_params):
            raise NotImplementedError(
                f"AutoFlowGuide: the flow's base {self.flow.base.name!r} has learnable params, so the posterior "
                "is no fixed base pushed through a transform; use a parameter-free base (standard_normal) and "
                "learn location and scale in the bijector (e.g. jaxflow.bijectors.affine)."
            )


def _guide_flow(flow_or_factory: FlowOrFactory, latent_dim: int) -> Flow:
    """The guide's flow, checked against the model's unconstrained latent size."""
    flow = flow_or_factory if isinstance(flow_or_factory, Flow) else flow_or_factory(latent_dim)
    if not isinstance(flow, Flow):
        raise TypeError(f"AutoFlowGuide: the flow factory returned a {type(flow).__name__}, expected a jaxflow Flow.")
    if flow.event_shape != (latent_dim,):
        raise ValueError(
            f"AutoFlowGuide: the model has {latent_dim} unconstrained latent dimensions, so the flow needs "
            f"event shape ({latent_dim},); got {flow.event_shape}."
        )
    if flow.context_shape is not None:
        raise ValueError("AutoFlowGuide: the flow must be unconditional (AutoContinuous guides take no context).")
    return flow
