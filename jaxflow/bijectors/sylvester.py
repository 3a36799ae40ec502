"""Sylvester flows: z' = z + Q R tanh(R~ Q^T z + b) with M orthonormal columns in Q.

R and R~ are M x M upper triangular, so by Sylvester's determinant identity
det(I + Q R diag(h') R~ Q^T) = det(I + diag(h') R~ R) = prod_i (1 + h'_i r_ii r~_ii),
an O(M) log-det. Invertibility for every value of the params: r~_ii = exp(s_i) > 0
and r_ii r~_ii = gain_i = one_plus_gain(a_i) - 1 > -1 (with tanh' in (0, 1] every
factor is then positive; r~_ii > 0 loses nothing, as tanh is odd).

Inverse: with v = Q^T z, Q^T z' = v + R tanh(R~ v + b), whose i-th row involves only
v_i, ..., v_M and, in v_i, reads alpha + gain_i tanh(alpha + s_i) + const for
alpha = r~_ii v_i. So back-substitution from i = M down to 1 solves M bracketed,
increasing 1-D equations (the planar one) to float precision (see `root_finding`),
and z = z' - Q R tanh(R~ v + b). This needs no damping, no contraction condition and
no starting point, unlike a Newton or fixed-point iteration on the dim-dimensional
system; gradients come from the implicit function theorem in each 1-D solve.

Q comes from one of three variants:
  "orthogonal": the Q factor of a free (dim, M) matrix, QR-decomposed with the
    signs fixed so that diag(R) > 0 (Gram-Schmidt: smooth, orthonormal to float
    precision, no iterative orthogonalisation to converge);
  "householder": the first M columns of a product of Householder reflections;
  "triangular": a fixed permutation matrix (M = dim), by default the reversal.

References: van den Berg et al. (2018), Sylvester Normalizing Flows for Variational
Inference, https://arxiv.org/abs/1803.05649
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxflow.bijectors._checks import check_dim, check_event, checked_params, refuse_concrete
from jaxflow.bijectors.base import Bijector
from jaxflow.bijectors.planar import TANH, log_one_plus_gain_times_slope, one_plus_gain

VARIANTS = ("orthogonal", "householder", "triangular")


def orthonormal_columns(matrix):
    """The Q of matrix = Q R (reduced QR) with diag(R) > 0, for a full-rank (n, m) matrix, n >= m."""
    q, r = jnp.linalg.qr(matrix)
    return q * jnp.where(jnp.diagonal(r) < 0, -1.0, 1.0).astype(q.dtype)


def householder_columns(reflections, num_columns: int):
    """The first `num_columns` columns of H_1 ... H_K, H_k = I - 2 v_k v_k^T / |v_k|^2; reflections (K, n)."""

    def reflect(columns, v):
        return columns - 2 * jnp.outer(v, v @ columns) / (v @ v), None

    columns = jnp.eye(reflections.shape[1], num_columns, dtype=reflections.dtype)
    return jax.lax.scan(reflect, columns, reflections, reverse=True)[0]


def sylvester(
    dim: int,
    *,
    num_vectors: int | None = None,
    variant: str = "orthogonal",
    num_householder: int | None = None,
    permutation=None,
) -> Bijector:
    """A Sylvester flow layer, invertible for every value of the params.

    Starts at the identity (R = 0) with a random Q, so that gradients reach R at once.
    Params: {"r": (M, M), "r_tilde": (M, M) (strict upper triangles used),
    "log_r_tilde_diag": (M,), "raw_gain": (M,) (r_ii = gain_i / r~_ii), "bias": (M,)},
    plus "basis": (dim, M) for "orthogonal" or "reflections": (K, dim) for
    "householder" (must stay full rank, resp. non-zero).

    Args:
      dim: event size.
      num_vectors: M, the number of hidden units, 1 <= M <= dim (default dim; must
        be dim for "triangular").
      variant: "orthogonal", "householder" or "triangular" (see the module docstring).
      num_householder: K, the number of reflections for "householder" (default dim).
      permutation: for "triangular", Q's column order (default: reversed).
    """
    dim = check_dim("sylvester", dim)
    num_vectors = dim if num_vectors is None else num_vectors
    if variant not in VARIANTS:
        raise ValueError(f"sylvester: variant must be one of {VARIANTS}, got {variant!r}.")
    if not isinstance(num_vectors, (int, np.integer)) or not 1 <= num_vectors <= dim:
        raise ValueError(f"sylvester: num_vectors must be an int in [1, dim={dim}], got {num_vectors!r}.")
    if variant == "triangular" and num_vectors != dim:
        raise ValueError(
            f"sylvester: the triangular variant permutes all coordinates, so num_vectors must equal dim={dim}, "
            f"got {num_vectors}."
        )
    name = f"sylvester_{variant}"
    q_map = _q_map(name, variant, dim, num_vectors, num_householder, permutation)
    shapes = dict.fromkeys(("r", "r_tilde"), (num_vectors, num_vectors))
    shapes |= dict.fromkeys(("log_r_tilde_diag", "raw_gain", "bias"), (num_vectors,))
    shapes |= q_map.shapes

    def init(key):
        params = {key_name: jnp.zeros(shape) for key_name, shape in shapes.items() if key_name not in q_map.shapes}
        return params | {key_name: jax.random.normal(key, shape) for key_name, shape in q_map.shapes.items()}

    def unpack(params, dtype):
        params = checked_params(name, params, shapes, dtype)
        r_tilde_diag = jnp.exp(params["log_r_tilde_diag"])
        gain_plus_one = one_plus_gain(params["raw_gain"])
        r = jnp.triu(params["r"], 1) + jnp.diag((gain_plus_one - 1) / r_tilde_diag)
        r_tilde = jnp.triu(params["r_tilde"], 1) + jnp.diag(r_tilde_diag)
        return q_map.columns(params), r, r_tilde, params["bias"], gain_plus_one

    def forward(params, z, context=None):
        del context
        z = check_event(name, z, (dim,))
        q, r, r_tilde, bias, gain_plus_one = unpack(params, z.dtype)
        pre_activation = r_tilde @ (q.T @ z) + bias
        log_det = jnp.sum(log_one_plus_gain_times_slope(TANH, pre_activation, gain_plus_one))
        return z + q @ (r @ jnp.tanh(pre_activation)), log_det

    def inverse(params, z_out, context=None):
        del context
        z_out = check_event(name, z_out, (dim,))
        q, r, r_tilde, bias, gain_plus_one = unpack(params, z_out.dtype)
        v = _back_substitute(r, r_tilde, bias, gain_plus_one, q.T @ z_out)
        pre_activation = r_tilde @ v + bias
        log_det = -jnp.sum(log_one_plus_gain_times_slope(TANH, pre_activation, gain_plus_one))
        return z_out - q @ (r @ jnp.tanh(pre_activation)), log_det

    return Bijector(init, forward, inverse, name)


def _back_substitute(r, r_tilde, bias, gain_plus_one, target):
    """Solves v + R tanh(R~ v + b) = target for v, last coordinate first; all (M,) or (M, M).

    Each row costs O(M^2) plus one 1-D root find, O(M^3) in all.
    """
    indices = jnp.arange(target.shape[0])

    def solve_row(v, i):
        # v holds the solved coordinates after i and zeros elsewhere, so row i of R~ v + b
        # lacks only its own term, and the later pre-activations are final.
        pre_activation = r_tilde @ v + bias
        known = jnp.sum(jnp.where(indices > i, r[i] * jnp.tanh(pre_activation), 0.0))
        alpha = TANH.solve(gain_plus_one[i], pre_activation[i], r_tilde[i, i] * (target[i] - known))
        return v.at[i].set(alpha / r_tilde[i, i]), None

    return jax.lax.scan(solve_row, jnp.zeros_like(target), indices, reverse=True)[0]


class _QMap(NamedTuple):
    """Q's params and the map from params to Q's (dim, M) orthonormal columns."""

    shapes: dict[str, tuple[int, ...]]
    columns: Callable


def _q_map(name, variant, dim, num_vectors, num_householder, permutation) -> _QMap:
    if variant != "householder" and num_householder is not None:
        raise ValueError(f"{name}: num_householder applies to the householder variant only.")
    if variant != "triangular" and permutation is not None:
        raise ValueError(f"{name}: permutation applies to the triangular variant only.")
    if variant == "orthogonal":
        return _QMap({"basis": (dim, num_vectors)}, lambda params: orthonormal_columns(params["basis"]))
    if variant == "householder":
        num_householder = dim if num_householder is None else num_householder
        if not isinstance(num_householder, (int, np.integer)) or num_householder < 1:
            raise ValueError(f"{name}: num_householder must be a positive int, got {num_householder!r}.")
        shapes = {"reflections": (num_householder, dim)}

        def columns(params):
            reflections = params["reflections"]
            refuse_concrete(name, jnp.all(jnp.sum(jnp.square(reflections), axis=-1) > 0),
                            "a Householder reflection is zero, and H = I - 2 v v^T / |v|^2 divides by it; "
                            "reflections must stay non-zero.")
            return householder_columns(reflections, num_vectors)

        return _QMap(shapes, columns)
    order = np.arange(dim)[::-1] if permutation is None else np.asarray(permutation)
    if order.shape != (dim,) or not np.array_equal(np.sort(order), np.arange(dim)):
        raise ValueError(f"{name}: permutation must be a permutation of range({dim}), got {permutation!r}.")
    matrix = np.eye(dim)[:, order]
    return _QMap({}, lambda params: jnp.asarray(matrix, params["bias"].dtype))
