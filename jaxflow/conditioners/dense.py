"""Dense layers whose weights keep their longer axis last, for a fast weight gradient on CPU.

A layer's weights are one param: `kernel` (in, out), as flax's `nn.Dense` stores them, or, for
a layer that narrows (see `stores_transposed`), `weight` (out, in). `kernel_of` reads either as
the kernel (in, out) and `with_kernel` writes a kernel back in the layout its shape calls for.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

KERNEL, WEIGHT = "kernel", "weight"  # the weights stored as (in, out), and as (out, in)


def stores_transposed(in_features: int, out_features: int) -> bool:
    """Whether a dense layer keeps its weights as (out, in) rather than (in, out): when it narrows.

    Reverse mode computes the weights' gradient as a contraction over the batch, which XLA on
    CPU leaves to Eigen; Eigen writes a result with few, long rows several times faster than
    one with many short rows (`python -m benchmarks.dense_layout`, 2-core CPU: 1.4x to 7.6x for
    layers narrowing 128 units to 8, 16 or 32, at batches 128 to 2048). The rule does not hold
    between wide layers: from 184 units to 128, (in, out) was 1.14x-1.22x faster at every batch
    measured, and from 128 to 184 the faster layout changed with the batch.
    """
    return out_features < in_features


def _transposed(init: Callable) -> Callable:
    """An initialiser of (out, in) weights drawing what `init` draws for (in, out), transposed."""
    return lambda key, shape, dtype=jnp.float32: init(key, shape[::-1], dtype).T


def stored_layout(in_features: int, out_features: int) -> tuple[str, tuple[int, int]]:
    """The name and shape under which a layer's weights are stored: `weight` (out, in) or `kernel` (in, out)."""
    if stores_transposed(in_features, out_features):
        return WEIGHT, (out_features, in_features)
    return KERNEL, (in_features, out_features)


def declare_weights(module: nn.Module, init: Callable, in_features: int, out_features: int):
    """Declares `module`'s weights in their `stored_layout`; returns (weights, transposed).

    Either layout draws what `init` draws for the kernel (in, out).
    """
    name, shape = stored_layout(in_features, out_features)
    transposed = name == WEIGHT
    return module.param(name, _transposed(init) if transposed else init, shape, jnp.float32), transposed


def product(h, weights, transposed: bool):
    """h (..., in) @ kernel, for weights stored as the kernel (in, out) or, `transposed`, as (out, in)."""
    return jnp.einsum("...i,oi->...o", h, weights) if transposed else h @ weights


def kernel_of(layer_params) -> jax.Array:
    """A layer's weights as the kernel (in, out), whichever layout its params store them in."""
    stored = {KERNEL, WEIGHT} & set(layer_params)
    if len(stored) != 1:
        raise ValueError(f"a dense layer's params hold one of {KERNEL!r} and {WEIGHT!r}, got {sorted(layer_params)}.")
    return layer_params[WEIGHT].T if WEIGHT in stored else layer_params[KERNEL]


def with_kernel(layer_params, kernel) -> dict:
    """`layer_params` with its weights replaced by `kernel` (in, out), stored in the layout its shape calls for."""
    others = {name: value for name, value in layer_params.items() if name not in (KERNEL, WEIGHT)}
    return others | ({WEIGHT: kernel.T} if stores_transposed(*kernel.shape) else {KERNEL: kernel})


class Dense(nn.Module):
    """A dense layer, h @ kernel + bias, whose weights keep their longer axis last.

    A layer that narrows stores them as `weight` (out, in), any other as `kernel` (in, out)
    (see `stores_transposed`); both draw the initial values flax's `nn.Dense` draws. Unlike
    `nn.Dense` it always has a bias and float32 params, and computes in the input's promoted
    dtype at the default precision.
    """

    features: int
    kernel_init: Callable = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, h):
        weights, transposed = declare_weights(self, self.kernel_init, h.shape[-1], self.features)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        return product(h, weights, transposed) + bias
