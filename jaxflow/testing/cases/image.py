"""Cases for the image bijectors: squeeze, masked image couplings, Glow steps, the multi-scale flow.

Shapes are tiny because the kit compares log-dets with `slogdet(jacfwd)` on the flattened event.
"""

from __future__ import annotations

import functools
import math

import jax
import numpy as np
from jax.flatten_util import ravel_pytree

from jaxflow.bijectors import transformers
from jaxflow.bijectors.image import glow_step, image_coupling, squeeze
from jaxflow.bijectors.multiscale import multiscale
from jaxflow.testing.cases._registry import normal_input, register

IMAGE = (4, 4, 2)
CONTEXT_DIM = 3
NETWORK = dict(hidden_channels=4, num_blocks=1)
LEVELS, STEPS_PER_LEVEL = 2, 2


def _noise_scale(path, leaf) -> float:
    """1 / sqrt(fan-in) for conv kernels (..., 3, 3, C_in, C_out) and channel-mixing matrices (..., C, C), else 1."""
    name = jax.tree_util.keystr(path)
    if name.endswith("['kernel']"):
        return 1.0 / math.sqrt(np.prod(np.shape(leaf)[-4:-1]))
    if any(name.endswith(f"['{matrix}']") for matrix in ("lower", "upper", "weight")):
        return 1.0 / math.sqrt(np.shape(leaf)[-1])
    return 1.0


def relative_perturbation(bijector, key, scale: float):
    """`bijector.init` params plus `scale * N(0, 1)` noise, relative to each leaf's natural size.

    Absolute noise on a 3x3 conv kernel with fan-in 9 C grows the network's output with
    its width; relative noise (`_noise_scale`) keeps every layer a moderate,
    well-conditioned map. The noise is drawn as one flat vector: one random-number
    kernel to compile, not one per leaf shape.
    """
    init_key, noise_key = jax.random.split(key)
    params = bijector.init(init_key)
    flat, unravel = ravel_pytree(params)
    sizes = jax.tree_util.tree_map_with_path(lambda path, a: np.full(np.shape(a), _noise_scale(path, a)), params)
    noise = jax.random.normal(noise_key, flat.shape, flat.dtype)
    return unravel(flat + scale * ravel_pytree(sizes)[0].astype(flat.dtype) * noise)


def _case(make, *, shape=IMAGE, context_dim=None, depth=1):
    """A case for `make()` on a normal image of `shape`, with relative noise divided by sqrt(depth).

    `depth` counts the layers a pixel passes through: independent noise in each compounds.
    """
    make = functools.cache(make)  # one bijector object per case: compiled checks are reused

    def case(key, *, param_scale=0.3, input_scale=1.0):
        bijector = make()
        params_key, x_key, context_key = jax.random.split(key, 3)
        params = relative_perturbation(bijector, params_key, param_scale / math.sqrt(depth))
        context = None if context_dim is None else normal_input(context_key, (context_dim,), 1.0)
        return bijector, params, normal_input(x_key, shape, input_scale), context

    return case


def _affine_coupling(shape=IMAGE, **kwargs):
    return lambda: image_coupling(shape, transformers.affine(), **NETWORK, **kwargs)


register("squeeze")(_case(lambda: squeeze(IMAGE)))
register("image_coupling_checkerboard")(_case(_affine_coupling(mask="checkerboard")))
register("image_coupling_channel")(_case(_affine_coupling(mask="channel")))
register("image_coupling_channel_odd_parity")(  # 3 channels: an uneven split
    _case(_affine_coupling((4, 4, 3), mask="channel", parity=1), shape=(4, 4, 3))
)
register("image_coupling_conditional")(_case(_affine_coupling(context_dim=CONTEXT_DIM), context_dim=CONTEXT_DIM))
register("glow_step_lu")(_case(lambda: glow_step(IMAGE, lu=True, **NETWORK)))
register("glow_step_plain")(_case(lambda: glow_step(IMAGE, lu=False, **NETWORK)))
register("multiscale_glow")(
    _case(
        lambda: multiscale(IMAGE, levels=LEVELS, steps_per_level=STEPS_PER_LEVEL, **NETWORK),
        depth=LEVELS * STEPS_PER_LEVEL,
    )
)
