"""Conditioners: networks that map the conditioning input (and a context) to transformer params.

    Conditioner(init, apply, bind=None)
      init(key)                       -> params
      apply(params, h, context=None)  -> raw params for the transformer
      bind(params, positions=None)    -> (h, context=None) -> the same, params-only work done once

Networks are Flax linen modules; only their params pytrees cross into bijectors. The
last layer starts at zero, so every fresh coupling or autoregressive layer is the identity:
a fresh flow built from them is its permutations alone, and its density is its base's
(the builders' standard normal is invariant under permutations) up to rounding (about 1e-6
in float32: jitted affine scales of one rounding, sums in another order).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxflow.bijectors._checks import check_context, check_context_dim, check_hidden
from jaxflow.conditioners.dense import Dense


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


class MLP(nn.Module):
    """Dense layers with `activation` between them; the output layer is zero-initialised.

    `dense` builds each layer as `dense(width, kernel_init=...)`: `conditioners.Dense` by
    default, or flax's `nn.Dense` to keep every kernel as (in, out). `kernel_init`, if given,
    draws the hidden layers' kernels (in, out); None keeps `dense`'s own (LeCun normal for both).
    """

    hidden: Sequence[int]
    out_dim: int
    activation: Callable = nn.relu
    dense: Callable = Dense
    kernel_init: Callable | None = None

    @nn.compact
    def __call__(self, h):
        init = {} if self.kernel_init is None else {"kernel_init": self.kernel_init}
        for width in self.hidden:
            h = self.activation(self.dense(width, **init)(h))
        return self.dense(self.out_dim, kernel_init=nn.initializers.zeros)(h)


def _joined(h, context):
    return h if context is None else jnp.concatenate([h.reshape(-1), context.reshape(-1)])


def from_linen(module: nn.Module, in_shape, *, context_dim: int | None = None) -> Conditioner:
    """Wraps a linen module taking one input array; the context is concatenated to a flat input.

    The module's own initialisers draw the params: a fresh layer on it is the identity only if
    its last layer starts at zero (as `mlp`'s does). Like `from_nnx`, it refuses modules with
    variables outside "params" (batch statistics; at init) or random streams (dropout; when called).

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
        variables = module.init(key, example)
        others = sorted(set(variables) - {"params"})
        if others:
            _refuse_impure("from_linen", f"needs state besides params (collections {', '.join(others)})")
        return variables

    def apply(params, h, context=None):
        context = check_context("conditioner", context, context_shape)
        try:
            return module.apply(params, _joined(h, context))
        except flax.errors.InvalidRngError:
            _refuse_impure("from_linen", "needs random numbers when applied (a dropout stream)")

    return Conditioner(init, apply)


def _refuse_impure(adapter: str, what: str):
    raise ValueError(
        f"{adapter}: the module {what}; a conditioner is a function of its params and input alone: "
        "build the module without dropout or batch statistics."
    )


def mlp(
    in_dim: int, out_dim: int, *, hidden: Sequence[int] = (128, 128), activation: Callable = nn.relu,
    context_dim: int | None = None, kernel_init: Callable | None = None,
) -> Conditioner:
    """A multilayer perceptron conditioner from `in_dim` (+ `context_dim`) to `out_dim`.

    `kernel_init` draws the hidden layers' kernels (in, out), LeCun normal by default; the
    output layer starts at zero.
    """
    module = MLP(check_hidden("mlp", hidden), out_dim, activation, kernel_init=kernel_init)
    return from_linen(module, (in_dim,), context_dim=check_context_dim("mlp", context_dim))


def from_nnx(make_module: Callable, *, context_dim: int | None = None) -> Conditioner:
    """Wraps an nnx module: `make_module(rngs)` builds it; params are its `nnx.Param` state.

    The module is called with concat(h, context) when `context_dim` is given, h otherwise.
    It must hold no other state (RNG streams of dropout, batch statistics): a conditioner is
    a function of its params and input alone, and params are trainable float arrays. The
    module's own initialisers draw the params: a fresh layer on it is the identity only if
    its last layer starts at zero (as `mlp`'s does).
    """
    from flax import nnx

    context_dim = check_context_dim("from_nnx", context_dim)
    graphdef, _, other_state = nnx.split(nnx.eval_shape(lambda: make_module(nnx.Rngs(0))), nnx.Param, ...)
    if jax.tree.leaves(other_state):
        variables = jax.tree.leaves(other_state, is_leaf=lambda leaf: isinstance(leaf, nnx.Variable))
        kinds = sorted({type(variable).__name__ for variable in variables})
        _refuse_impure("from_nnx", f"holds state besides nnx.Param ({', '.join(kinds)})")
    context_shape = None if context_dim is None else (context_dim,)

    def init(key):
        return nnx.split(make_module(nnx.Rngs(key)), nnx.Param)[1]

    def apply(params, h, context=None):
        context = check_context("conditioner", context, context_shape)
        return nnx.merge(graphdef, params)(_joined(h, context))

    return Conditioner(init, apply)
