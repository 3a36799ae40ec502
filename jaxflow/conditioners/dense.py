"""Dense layers whose weights keep their longer axis last, for a fast weight gradient on CPU."""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax.numpy as jnp


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
