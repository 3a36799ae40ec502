"""Matrix-product FLOPs of a JAX function, read from its jaxpr with every loop counted per iteration.

XLA's cost analysis counts a loop body once, so a `lax.scan` over 8 layers reports an eighth of
its work and looped and unrolled programs are not comparable. This counter walks the jaxpr
instead: `dot_general` and `conv_general_dilated` cost 2 FLOPs per multiply-add, a `scan`
multiplies its body by its length, a `cond` counts its most expensive branch, and a
`while_loop` (trip count unknown before running) counts its body once. Element-wise work is
not counted: the figure measures how busy the matrix units are.
"""

from __future__ import annotations

import math

import jax
from jax.extend import core


def matmul_flops(fn, *args, **kwargs) -> int:
    """FLOPs of the matrix products and convolutions in `fn(*args, **kwargs)`, loops unrolled."""
    return _jaxpr_flops(jax.make_jaxpr(fn)(*args, **kwargs).jaxpr)


def _jaxpr_flops(jaxpr) -> int:
    return sum(_equation_flops(equation) for equation in jaxpr.eqns)


def _equation_flops(equation) -> int:
    name = equation.primitive.name
    if name == "dot_general":
        return _dot_flops(equation)
    if name == "conv_general_dilated":
        return _conv_flops(equation)
    if name == "cond":
        return max(_jaxpr_flops(branch.jaxpr) for branch in equation.params["branches"])
    repeats = equation.params["length"] if name == "scan" else 1
    return repeats * sum(_jaxpr_flops(sub) for sub in _sub_jaxprs(equation.params))


def _sub_jaxprs(params):
    """The jaxprs nested in an equation's params (a call's body, a loop's body and condition)."""
    for value in params.values():
        for item in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(item, core.ClosedJaxpr):
                yield item.jaxpr
            elif isinstance(item, core.Jaxpr):
                yield item


def _dot_flops(equation) -> int:
    lhs, rhs = (variable.aval.shape for variable in equation.invars)
    (_, rhs_contracting), (_, rhs_batch) = equation.params["dimension_numbers"]
    rhs_free = [size for axis, size in enumerate(rhs) if axis not in (*rhs_contracting, *rhs_batch)]
    return 2 * math.prod(lhs) * math.prod(rhs_free)


def _conv_flops(equation) -> int:
    kernel = equation.invars[1].aval.shape
    output = equation.outvars[0].aval.shape
    out_features = kernel[equation.params["dimension_numbers"].rhs_spec[0]]
    return 2 * math.prod(output) * math.prod(kernel) // out_features
