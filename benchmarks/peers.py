"""The same models in jaxflow, distrax and flowjax, for timing identical work.

Each builder returns a `Model(params, log_prob, sample)` on events of one shape:
  log_prob(params, x (n, *event_shape)) -> (n,)     sample(params, key, n) -> (n, *event_shape)
Vector models, on events of shape (dim,): realnvp (affine couplings + random permutations), maf
(affine MADE layers + random permutations, each library's own affine transformer: jaxflow's
bounded `exp_affine`, flowjax's softplus scale), nsf (rational-quadratic spline couplings + random
permutations, each library drawing its own); all with MLPs of `hidden` widths, each coupling's
network reading dim // 2 entries and parametrising the other ones, the base a fixed standard
normal, the couplings' transformer applied in the sampling direction (flowjax's default inverts
its couplings: `invert=False` here). Every library trains as many params, except that flowjax's
splines learn both boundary derivatives, 2 more raw params per entry than jaxflow's and distrax's
3 * bins - 1 (tests/test_benchmarks.py counts them; distrax's network computes only the slopes
its `boundary_slopes="identity"` splines read). jaxflow also
builds every other ready-made flow of `jaxflow.flows`: the vector flows nice, iaf,
nsf_autoregressive, flowpp, residual, planar, radial and sylvester, and Glow on images of shape
(H, W, C), none of which a peer expresses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxflow import flows
from jaxflow.bijectors import random_permutations, transformers
from jaxflow.bijectors._checks import as_shape
from jaxflow.bijectors.coupling import half_mask
from jaxflow.conditioners import MLP
from jaxflow.conditioners.dense import kernel_of
from jaxflow.flows._layers import _covering_permutations


class Model(NamedTuple):
    params: object
    log_prob: Callable
    sample: Callable


def vector_dim(event_shape) -> int:
    """The size of a vector event shape (dim,); an int is read as (dim,)."""
    shape = as_shape(event_shape)
    if len(shape) != 1:
        raise ValueError(f"a flow on vectors needs an event shape (dim,), got {shape}.")
    return shape[0]


# jaxflow -------------------------------------------------------------------------------------

_JAXFLOW_VECTOR_FLOWS = {
    "realnvp": lambda dim, layers, hidden, bins, **options: flows.realnvp(dim, layers=layers, hidden=hidden, **options),
    "maf": lambda dim, layers, hidden, bins, **options: flows.maf(dim, layers=layers, hidden=hidden, **options),
    "nsf": lambda dim, layers, hidden, bins, **options: flows.nsf_coupling(
        dim, layers=layers, hidden=hidden, bins=bins, bound=4.0, **options),
    "nice": lambda dim, layers, hidden, bins: flows.nice(dim, layers=layers, hidden=hidden),
    "iaf": lambda dim, layers, hidden, bins: flows.iaf(dim, layers=layers, hidden=hidden),
    "nsf_autoregressive": lambda dim, layers, hidden, bins: flows.nsf_autoregressive(
        dim, layers=layers, hidden=hidden, bins=bins, bound=4.0),
    "flowpp": lambda dim, layers, hidden, bins: flows.flowpp(dim, layers=layers, hidden=hidden, components=bins),
    "residual": lambda dim, layers, hidden, bins: flows.residual_flow(dim, layers=layers, hidden=hidden),
    "planar": lambda dim, layers, hidden, bins: flows.planar_flow(dim, layers=layers),
    "radial": lambda dim, layers, hidden, bins: flows.radial_flow(dim, layers=layers),
    "sylvester": lambda dim, layers, hidden, bins: flows.sylvester_flow(dim, layers=layers),
}
# Built as `builder(image_shape, **config)`, with the builder's own keyword arguments as config.
_JAXFLOW_IMAGE_FLOWS = {"glow": flows.glow}


def jaxflow_model(name, key, event_shape, *args, **config) -> Model:
    """A vector flow from (layers, hidden, bins=8), or an image flow from its builder's keyword arguments."""
    if name in _JAXFLOW_IMAGE_FLOWS:
        flow = _JAXFLOW_IMAGE_FLOWS[name](as_shape(event_shape), *args, **config)
    else:
        flow = _jaxflow_vector_flow(name, vector_dim(event_shape), *args, **config)
    return Model(flow.init(key), flow.log_prob, lambda params, key, n: flow.sample(params, key, (n,)))


def _jaxflow_vector_flow(name, dim, layers, hidden, bins=8, **options):
    """`bins` is the spline bins or Flow++'s mixture components, 8 by default as for the peers."""
    return _JAXFLOW_VECTOR_FLOWS[name](dim, layers, hidden, bins, **options)


UNROLLED_MODELS = ("realnvp", "maf", "nsf")


def jaxflow_unrolled_model(name, key, event_shape, *args, **config) -> Model:
    """jaxflow's flow with every layer unrolled (`unroll=True`): compile time for run time."""
    return jaxflow_model(name, key, event_shape, *args, **config, unroll=True)


# flowjax -------------------------------------------------------------------------------------

def flowjax_flow(name, key, dim: int, layers, hidden, bins=8):
    """flowjax's flow: the same layers, widths and bins as jaxflow's (flowjax counts inner knots, bins - 1).

    Couplings get `invert=False`, so that, as in jaxflow and distrax, sampling runs the spline and
    densities invert it (flowjax's default, the reverse, samples its NSF about 1.6x slower).
    """
    from flowjax.bijections import Affine, RationalQuadraticSpline
    from flowjax.distributions import Normal
    from flowjax.flows import coupling_flow, masked_autoregressive_flow

    if len(set(hidden)) != 1:
        raise ValueError("flowjax uses one width for every hidden layer")
    common = dict(base_dist=Normal(jnp.zeros(dim)), flow_layers=layers, nn_width=hidden[0], nn_depth=len(hidden))
    if name == "realnvp":
        return coupling_flow(key, transformer=Affine(), invert=False, **common)
    if name == "maf":
        return masked_autoregressive_flow(key, transformer=Affine(), **common)
    if name == "nsf":
        spline = RationalQuadraticSpline(knots=bins - 1, interval=4.0)
        return coupling_flow(key, transformer=spline, invert=False, **common)
    raise ValueError(f"flowjax_flow: no flowjax model {name!r}; expected one of {FLOWJAX_MODELS}.")


def flowjax_model(name, key, event_shape, layers, hidden, bins=8) -> Model:
    """flowjax's flow with its base distribution held fixed, as jaxflow's standard normal is."""
    import equinox as eqx

    flow = flowjax_flow(name, key, vector_dim(event_shape), layers, hidden, bins)
    trained = jax.tree.map(eqx.is_inexact_array, flow)
    trained = eqx.tree_at(lambda tree: tree.base_dist, trained, replace=jax.tree.map(lambda _: False, flow.base_dist))
    params, static = eqx.partition(flow, trained)

    def log_prob(params, x):
        return eqx.combine(params, static).log_prob(x)

    def sample(params, key, n):
        return eqx.combine(params, static).sample(key, (n,))

    return Model(params, log_prob, sample)


# distrax -------------------------------------------------------------------------------------

def _distrax_permutation(perm):
    import distrax

    inverse_perm = np.argsort(perm)

    class Permute(distrax.Bijector):
        def __init__(self):
            super().__init__(event_ndims_in=1, is_constant_jacobian=True)

        def forward_and_log_det(self, x):
            return x[..., perm], jnp.zeros(x.shape[:-1], x.dtype)

        def inverse_and_log_det(self, y):
            return y[..., inverse_perm], jnp.zeros(y.shape[:-1], y.dtype)

    return Permute()


def _distrax_affine(size):
    import distrax

    offset = float(np.log(np.expm1(1.0 - 1e-3)))

    def make(raw):
        raw = raw.reshape(*raw.shape[:-1], size, 2)
        scale = jax.nn.softplus(raw[..., 1] + offset) + 1e-3
        return distrax.Block(distrax.ScalarAffine(shift=raw[..., 0], scale=scale), 1)

    return make, 2


def _distrax_spline(size, bins):
    """Splines with unit boundary slopes from 3 * bins - 1 raw params per entry, as jaxflow's.

    distrax reads 3 * bins + 1 (widths, heights, then every knot's slope) and, with
    `boundary_slopes="identity"`, ignores the first and last slope: zeros stand in for them
    rather than two network outputs per entry that would never train.
    """
    import distrax

    num_params = 3 * bins - 1

    def make(raw):
        raw = raw.reshape(*raw.shape[:-1], size, num_params)
        unused_slope = jnp.zeros_like(raw[..., :1])
        raw = jnp.concatenate([raw[..., : 2 * bins], unused_slope, raw[..., 2 * bins :], unused_slope], axis=-1)
        spline = distrax.RationalQuadraticSpline(raw, range_min=-4.0, range_max=4.0, boundary_slopes="identity")
        return distrax.Block(spline, 1)

    return make, num_params


def distrax_model(name, key, event_shape, layers, hidden, bins=8) -> Model:
    """distrax: a Python-loop `Chain` of `SplitCoupling` + permutation (no MADE in distrax).

    Each coupling's network reads the first dim // 2 entries and parametrises the others, as
    jaxflow's half mask does (distrax's `MaskedCoupling` would read and transform all of them).
    """
    import distrax

    dim = vector_dim(event_shape)
    split, rest = dim // 2, dim - dim // 2
    if name == "realnvp":
        make_bijector, num_params = _distrax_affine(rest)
    elif name == "nsf":
        make_bijector, num_params = _distrax_spline(rest, bins)
    else:
        raise ValueError(f"distrax_model: no distrax model {name!r}; expected one of {DISTRAX_MODELS}.")
    net = MLP(tuple(hidden), num_params * rest, dense=nn.Dense)  # flax's layers: what a distrax user writes
    perms = np.asarray(random_permutations(jax.random.key(1), layers, dim))
    params = [net.init(k, jnp.zeros(split)) for k in jax.random.split(key, layers)]
    base = distrax.MultivariateNormalDiag(jnp.zeros(dim), jnp.ones(dim))

    def build(params):
        bijectors = []
        for p, perm in zip(params, perms):
            coupling = distrax.SplitCoupling(
                split_index=split, event_ndims=1, conditioner=lambda x, p=p: net.apply(p, x), bijector=make_bijector
            )
            bijectors += [coupling, _distrax_permutation(perm)]
        return distrax.Transformed(base, distrax.Chain(bijectors[::-1]))  # distrax applies the last listed first

    def sample(params, key, n):
        return build(params).sample(seed=key, sample_shape=(n,))

    return Model(params, lambda params, x: build(params).log_prob(x), sample)


# written out ---------------------------------------------------------------------------------

def written_out_model(name, key, event_shape, layers, hidden, bins=8) -> Model:
    """jaxflow's RealNVP written out in jax.numpy, as a user would: a bare reference for the RealNVP rows.

    The same params (jaxflow's), permutations and maths as `flows.realnvp`, as one `lax.scan`
    of matrix products and element-wise code: no bijector protocol, no checks, no conditioner
    modules, and none of the CPU layouts jaxflow chooses for speed (per-layer vectors selected
    by a masked sum, `jaxflow.bijectors.base`). Time a library takes beyond it is its
    abstractions' cost; time it saves, its own optimisations (on a 2-core CPU jaxflow samples
    1.5x as fast). tests/test_benchmarks.py checks that it computes jaxflow's density.
    """
    if name != "realnvp":
        raise ValueError(f"written_out_model: only 'realnvp' is written out, got {name!r}.")
    dim = vector_dim(event_shape)
    flow = flows.realnvp(dim, layers=layers, hidden=hidden)
    perms = _covering_permutations(jax.random.key(0), layers, dim, ~half_mask(dim))  # realnvp's seed 0
    orders = (jnp.asarray(perms), jnp.asarray(np.argsort(perms, axis=1)))
    split, offset = dim // 2, transformers.softplus_inverse(1.0 - 1e-3)

    def reordered(x, order):  # jaxflow's gather: indices promised unique and in bounds
        return jnp.take(x, order, axis=1, mode="clip", unique_indices=True)

    def shift_and_scale(network, kept):
        *hidden_layers, last = [network["params"][f"Dense_{i}"] for i in range(len(hidden) + 1)]
        for dense in hidden_layers:
            kept = jax.nn.relu(kept @ kernel_of(dense) + dense["bias"])
        shift, raw = jnp.split(kept @ kernel_of(last) + last["bias"], 2, axis=-1)
        return shift, 1.0 + jax.nn.softplus(raw + offset) - jax.nn.softplus(offset)

    def log_prob(params, x):
        def undo_layer(carry, layer):  # inverse permutation, then the inverse coupling
            y, log_det = carry
            network, (_, inverse_perm) = layer
            y = reordered(y, inverse_perm)
            shift, scale = shift_and_scale(network, y[:, :split])
            x = jnp.concatenate([y[:, :split], (y[:, split:] - shift) / scale], axis=1)
            return (x, log_det - jnp.sum(jnp.log(scale), axis=1)), None

        start = (x, jnp.zeros(x.shape[0], x.dtype))
        (z, log_det), _ = jax.lax.scan(undo_layer, start, (params["bijector"][0], orders), reverse=True)
        return log_det - 0.5 * jnp.sum(z**2, axis=1) - 0.5 * dim * np.log(2 * np.pi)

    def sample(params, key, n):
        def layer(x, layer):  # the coupling, then the permutation
            network, (perm, _) = layer
            shift, scale = shift_and_scale(network, x[:, :split])
            return reordered(jnp.concatenate([x[:, :split], x[:, split:] * scale + shift], axis=1), perm), None

        z = jax.random.normal(key, (n, dim))
        return jax.lax.scan(layer, z, (params["bijector"][0], orders))[0]

    return Model(flow.init(key), log_prob, sample)


FLOWJAX_MODELS = ("realnvp", "maf", "nsf")
DISTRAX_MODELS = ("realnvp", "nsf")
PEER_PACKAGES = ("flowjax", "distrax")  # the libraries that are packages of their own
# library -> (the models it expresses, their builder)
LIBRARIES = {
    "jaxflow": ((*_JAXFLOW_VECTOR_FLOWS, *_JAXFLOW_IMAGE_FLOWS), jaxflow_model),
    "jaxflow-unrolled": (UNROLLED_MODELS, jaxflow_unrolled_model),
    "flowjax": (FLOWJAX_MODELS, flowjax_model),
    "distrax": (DISTRAX_MODELS, distrax_model),
    "written-out": (("realnvp",), written_out_model),
}


def build(library, name, key, event_shape, *args, **config) -> Model | None:
    """`name` on events of `event_shape` (an int: a vector's size), or None when `library` cannot express it.

    `args` and `config` go to the builder: (layers, hidden, bins=8) for a vector model, the builder's
    keyword arguments for an image flow.
    """
    models, builder = LIBRARIES[library]
    if name not in models:
        return None
    return builder(name, key, event_shape, *args, **config)
