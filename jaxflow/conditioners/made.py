"""MADE: a masked MLP whose output for dimension j sees only the inputs before j in an order.

Every unit carries a degree `d`, meaning it may depend on the inputs whose position
in the order is below `d`, and a weight connects unit a to unit b iff d_a <= d_b:

    input i        degree order[i] + 1       (it depends on itself)
    context        degree 0                  (it depends on no input)
    hidden unit    degree in [low, dim - 1]
    output (j, p)  degree order[j]           (strictly before j)

so output j depends on input i only if order[i] < order[j]. A conditional MADE starts
its hidden degrees at 0, so the first dimension in the order still sees the context.

References: Germain et al. (2015) MADE, https://arxiv.org/abs/1502.03509
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxflow.bijectors._checks import check_context, check_context_dim, check_event, check_hidden, is_positive_int
from jaxflow.conditioners import dense
from jaxflow.conditioners.mlp import Conditioner

HIDDEN_DEGREES = ("sequential", "random")


class MaskedDense(nn.Module):
    """`h @ (kernel * mask) + bias`: a dense layer with a fixed 0/1 connectivity mask.

    Its weights are stored as `conditioners.Dense` stores them: `weight` (out, in) for a layer
    that narrows, else `kernel` (in, out) (`dense.kernel_of` reads either as (in, out)).

    Attributes:
      mask: numpy array (in_features, features); a constant, never a param.
      kernel_init: initialiser of the (unmasked) kernel, (in, out).
      premasked: the weights in params already carry the mask (see `mask_kernels`).
    """

    mask: np.ndarray
    kernel_init: Callable = nn.initializers.lecun_normal()
    premasked: bool = False

    @nn.compact
    def __call__(self, h):
        weights, transposed = dense.declare_weights(self, self.kernel_init, *self.mask.shape)
        bias = self.param("bias", nn.initializers.zeros, self.mask.shape[1:], jnp.float32)
        if not self.premasked:
            weights = weights * (self.mask.T if transposed else self.mask).astype(weights.dtype)
        return dense.product(h, weights, transposed) + bias


class MADE(nn.Module):
    """Masked dense layers with `activation` between them; the output layer starts at zero.

    Attributes:
      masks: one (in, out) mask per layer, the last one for the output layer.
      activation: applied after every hidden layer.
      premasked: the kernels in params already carry their masks (see `mask_kernels`).
    """

    masks: Sequence[np.ndarray]
    activation: Callable = nn.relu
    premasked: bool = False

    @nn.compact
    def __call__(self, h):
        *hidden_masks, output_mask = self.masks
        for mask in hidden_masks:
            h = self.activation(MaskedDense(mask, premasked=self.premasked)(h))
        return MaskedDense(output_mask, kernel_init=nn.initializers.zeros, premasked=self.premasked)(h)

    def mask_kernels(self, params):
        """`params` with every kernel multiplied by its mask, for `MADE(..., premasked=True)`."""
        layers = dict(params["params"])
        for i, mask in enumerate(self.masks):
            name, layer = f"MaskedDense_{i}", layers.get(f"MaskedDense_{i}", {})
            stored, shape = dense.stored_layout(*mask.shape)
            if jnp.shape(layer.get(stored)) != shape:
                got = ", ".join(f"{key} of shape {jnp.shape(value)}" for key, value in layer.items() if key != "bias")
                raise ValueError(f"MADE: expected a {name} {stored} of shape {shape}, got {got or 'no weights'}; "
                                 "were these params made by this MADE's init?")
            layers[name] = dense.with_kernel(layer, dense.kernel_of(layer) * mask.astype(layer[stored].dtype))
        return {**params, "params": layers}

    def restricted(self, params, hidden_units: Sequence[np.ndarray]):
        """This MADE on some of its hidden units (an index array per hidden layer), and its params.

        Outputs that read only kept units keep their values; the others change.
        """
        units = [np.arange(self.masks[0].shape[0]), *hidden_units, np.arange(self.masks[-1].shape[1])]
        masks, layers = [], {}
        for i, (mask, rows, columns) in enumerate(zip(self.masks, units, units[1:])):
            layer = params["params"][f"MaskedDense_{i}"]
            masks.append(mask[np.ix_(rows, columns)])
            kernel, bias = dense.kernel_of(layer)[np.ix_(rows, columns)], layer["bias"][columns]
            layers[f"MaskedDense_{i}"] = dense.with_kernel({"bias": bias}, kernel)
        return self.clone(masks=masks), {**params, "params": layers}


def check_order(dim: int, order) -> np.ndarray:
    """Returns `order` (default 0..dim-1) as an int array after checking it permutes 0..dim-1."""
    if order is None:
        return np.arange(dim)
    order = np.asarray(order)
    is_permutation = np.issubdtype(order.dtype, np.integer) and np.array_equal(np.sort(order), np.arange(dim))
    if order.shape != (dim,) or not is_permutation:
        raise ValueError(f"made: order must be a permutation of 0..{dim - 1} as ints, got {order.tolist()}.")
    return order


def hidden_unit_degrees(
    dim: int, hidden: Sequence[int], *, conditional: bool, method: str = "sequential", key=None
) -> list[np.ndarray]:
    """Degrees of the hidden units, one int array per layer.

    Args:
      dim: number of autoregressive dimensions.
      hidden: layer widths.
      conditional: if True the lowest degree is 0 (units fed by the context only).
      method: "sequential" cycles through the degrees; "random" draws each layer's
        degrees uniformly from [min of the previous layer's, dim - 1] (needs `key`), and,
        when conditional, gives each layer's first unit degree 0.
      key: PRNG key for "random"; degrees are drawn on the host, at construction.
    """
    if method not in HIDDEN_DEGREES:
        raise ValueError(f"made: hidden_degrees must be one of {HIDDEN_DEGREES}, got {method!r}.")
    if method == "random" and key is None:
        raise ValueError('made: hidden_degrees="random" needs key=... to draw the degrees.')
    low = 0 if conditional else min(1, dim - 1)
    if method == "sequential":
        return [low + np.arange(width) % (dim - low) for width in hidden]
    degrees = []
    for width, layer_key in zip(hidden, jax.random.split(key, len(hidden))):  # at construction, not traced
        layer_degrees = np.array(jax.random.randint(layer_key, (width,), low, dim))
        if conditional:  # a unit of degree 0 in every layer carries the context to the first output in the order
            layer_degrees[0] = 0
        degrees.append(layer_degrees)
        low = int(layer_degrees.min())
    return degrees


def made_masks(
    order: np.ndarray, num_params: int, hidden_degrees: Sequence[np.ndarray], context_dim: int = 0
) -> list[np.ndarray]:
    """Connectivity masks, input (dim + context_dim) to output (dim * num_params), for the degrees.

    Output unit `p * dim + j` is param p of dimension j: each param is one contiguous
    block, so the element-wise kernels that read it get unit-stride slices.
    """
    input_degrees = np.concatenate([order + 1, np.zeros(context_dim, int)])
    output_degrees = np.tile(order, num_params)
    degrees = [input_degrees, *hidden_degrees, output_degrees]
    return [previous[:, None] <= following[None, :] for previous, following in itertools.pairwise(degrees)]


def made(
    dim: int,
    num_params: int,
    *,
    hidden: Sequence[int] = (128, 128),
    activation: Callable = nn.relu,
    order=None,
    context_dim: int | None = None,
    hidden_degrees: str = "sequential",
    key=None,
) -> Conditioner:
    """A MADE conditioner: `apply(params, x (dim,), context=None) -> theta (dim, num_params)`.

    `theta[j]` depends only on the `x[i]` with `order[i] < order[j]` (and on the
    context, which feeds every unit of the first hidden layer). Fresh params give
    `theta = 0`.

    Args:
      dim: size of the input vector.
      num_params: outputs per dimension (a transformer's `num_params`).
      hidden: widths of the hidden layers.
      activation: nonlinearity between layers.
      order: permutation of 0..dim-1, `order[i]` the position of input i in the
        autoregressive order; default the identity.
      context_dim: size of the context vector for a conditional MADE.
      hidden_degrees: "sequential" or "random" (Germain et al.'s two schemes).
      key: PRNG key, needed for `hidden_degrees="random"`.
    """
    hidden, context_dim = check_hidden("made", hidden), check_context_dim("made", context_dim)
    if not (is_positive_int(dim) and is_positive_int(num_params)):
        raise ValueError(f"made: dim and num_params must be positive ints, got {dim!r} and {num_params!r}.")
    order = check_order(dim, order)
    degrees = hidden_unit_degrees(dim, hidden, conditional=context_dim is not None, method=hidden_degrees, key=key)
    module = MADE(made_masks(order, num_params, degrees, context_dim or 0), activation)
    context_shape = None if context_dim is None else (context_dim,)

    def inputs(x, context):
        x = check_event("made", x, (dim,))
        context = check_context("made", context, context_shape)
        return x if context is None else jnp.concatenate([x, context.astype(x.dtype)])

    def init(key):
        return module.init(key, jnp.zeros(dim + (context_dim or 0)))

    def run(network, params, x, context=None):
        return network.apply(params, inputs(x, context)).reshape(num_params, dim).T

    def bind(params, positions=None):
        network, params = module.clone(premasked=True), module.mask_kernels(params)
        if positions is not None and positions < dim:
            # The entry k-th in the order reads only the hidden units of degree <= k. Keeping
            # more changes none of those entries, so each layer keeps its lowest degree at least
            # (flax cannot initialise an empty layer).
            read = [np.flatnonzero(d < max(positions, d.min() + 1)) for d in degrees]
            network, params = network.restricted(params, read)
        return functools.partial(run, network, params)

    return Conditioner(init, functools.partial(run, module), bind)
