"""Conditioners: networks that map the conditioning input (and a context) to transformer params.

    Conditioner(init, apply, bind=None)
      init(key)                       -> params
      apply(params, h, context=None)  -> raw params for the transformer
      bind(params, positions=None)    -> (h, context=None) -> the same, params-only work done once

Networks are Flax linen modules; only their params pytrees cross into bijectors. The
last layer starts at zero, so every fresh coupling or autoregressive layer is the identity:
a fresh flow built from them is its permutations alone, and its density is its base's
(the builders' standard normal is invariant under permutations).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import flax.linen as nn
import jax.numpy as jnp

from jaxflow.bijectors._checks import check_context, check_context_dim, check_hidden


class Conditioner(NamedTuple):
    """A network as pure functions: `init(key) -> params`, `apply(params, h, context=None)`.

    `bind`, optional, fixes the params and does the work that depends on them alone once
    (MADE masks its kernels), for callers that apply one params many times in a loop, such as
    autoregressive sampling: XLA does not always hoist that work out of the loop itself. Given
    `positions`, an autoregressive conditioner's bound function need only be exact for the
    entries among the first `positions` in its order, and may skip the work the others need.
    """

    init: Callable
    apply: Callable
    bind: Callable | None = None

    def bound(self, params, positions: int | None = None) -> Callable:
        """`(h, context=None) -> apply(params, h, context)` (see `bind`); exact at least for `positions`."""
        if self.bind is None:
            return functools.partial(self.apply, params)
        return self.bind(params, positions)


def stores_transposed(in_features: int, out_features: int) -> bool:
    """Whether a dense layer keeps its weights as (out, in) rather than (in, out): when it narrows.

    Reverse mode computes the weights' gradient as a contraction over the batch, which XLA on
    CPU leaves to Eigen; Eigen writes a result with few, long rows several times faster than
    one with many short rows (`python -m benchmarks.dense_layout`, 2-core CPU: 1.4x to 7.6x for
    layers narrowing 128 units to 8, 16 or 32, at batches 128 to 2048; between 128 and 184 units
    neither layout wins at every batch). Storing the weights with their longer axis last gives
    the gradient that shape.
    """
    return out_features < in_features


def _transposed(init: Callable) -> Callable:
    """An initialiser of (out, in) weights drawing what `init` draws for (in, out), transposed."""
    return lambda key, shape, dtype=jnp.float32: init(key, shape[::-1], dtype).T


def declare_weights(module: nn.Module, init: Callable, in_features: int, out_features: int):
    """`module`'s weights param: `weight` (out, in) where `stores_transposed`, else `kernel` (in, out).

    Both draw what `init` draws for (in, out).
    """
    if stores_transposed(in_features, out_features):
        return module.param("weight", _transposed(init), (out_features, in_features), jnp.float32)
    return module.param("kernel", init, (in_features, out_features), jnp.float32)


def times_weights(h, weights, transposed: bool):
    """h (..., in) @ kernel, for weights stored as the kernel (in, out) or, `transposed`, as (out, in)."""
    return jnp.einsum("...i,oi->...o", h, weights) if transposed else h @ weights


class Dense(nn.Module):
    """A dense layer, h @ kernel + bias, whose weights keep their longer axis last.

    A layer that narrows stores them as `weight` (out, in), any other as `kernel` (in, out)
    (see `stores_transposed`); both draw the initial values flax's `nn.Dense` draws.
    """

    features: int
    kernel_init: Callable = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, h):
        in_features = h.shape[-1]
        weights = declare_weights(self, self.kernel_init, in_features, self.features)
        y = times_weights(h, weights, stores_transposed(in_features, self.features))
        return y + self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)


class MLP(nn.Module):
    """Dense layers with `activation` between them; the output layer is zero-initialised."""

    hidden: Sequence[int]
    out_dim: int
    activation: Callable = nn.relu

    @nn.compact
    def __call__(self, h):
        for width in self.hidden:
            h = self.activation(Dense(width)(h))
        return Dense(self.out_dim, kernel_init=nn.initializers.zeros)(h)


def _joined(h, context):
    return h if context is None else jnp.concatenate([h.reshape(-1), context.reshape(-1)])


def from_linen(module: nn.Module, in_shape, *, context_dim: int | None = None) -> Conditioner:
    """Wraps a linen module taking one input array; the context is concatenated to a flat input.

    Args:
      module: maps h (or concat(h, context) flattened, when conditional) to raw params.
      in_shape: shape of h (without context).
      context_dim: size of the context; None for an unconditional conditioner.
    """
    in_shape = (in_shape,) if isinstance(in_shape, int) else tuple(in_shape)
    context_dim = check_context_dim("from_linen", context_dim)
    context_shape = None if context_dim is None else (context_dim,)
    example = jnp.zeros(in_shape)
    if context_shape is not None:
        example = _joined(example, jnp.zeros(context_shape))

    def init(key):
        return module.init(key, example)

    def apply(params, h, context=None):
        context = check_context("conditioner", context, context_shape)
        return module.apply(params, _joined(h, context))

    return Conditioner(init, apply)


def mlp(
    in_dim: int, out_dim: int, *, hidden: Sequence[int] = (128, 128), activation: Callable = nn.relu,
    context_dim: int | None = None,
) -> Conditioner:
    """A multilayer perceptron conditioner from `in_dim` (+ `context_dim`) to `out_dim`."""
    module = MLP(check_hidden("mlp", hidden), out_dim, activation)
    return from_linen(module, (in_dim,), context_dim=check_context_dim("mlp", context_dim))


def from_nnx(make_module: Callable, *, context_dim: int | None = None) -> Conditioner:
    """Wraps an nnx module: `make_module(rngs)` builds it; params are its `nnx.State`.

    The module is called with concat(h, context) when `context_dim` is given, h otherwise.
    """
    from flax import nnx

    context_dim = check_context_dim("from_nnx", context_dim)
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: make_module(nnx.Rngs(0))))
    context_shape = None if context_dim is None else (context_dim,)

    def init(key):
        return nnx.split(make_module(nnx.Rngs(key)))[1]

    def apply(params, h, context=None):
        context = check_context("conditioner", context, context_shape)
        return nnx.merge(graphdef, params)(_joined(h, context))

    return Conditioner(init, apply)
