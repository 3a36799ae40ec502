"""Opt-in validation: report NaN/inf values by layer name instead of propagating them.

    with jaxflow.validation.enabled():
        flow.log_prob(params, x)        # raises FloatingPointError naming the layer

The switch is read when a function is traced: enable it before the first call
of a jitted function (or call `jax.clear_caches()`). When off, nothing is added
to the computation.
"""

from __future__ import annotations

import contextlib
import functools
import threading

import jax
import jax.numpy as jnp
import numpy as np

_state = threading.local()


def is_enabled() -> bool:
    return getattr(_state, "enabled", False)


@contextlib.contextmanager
def enabled(on: bool = True):
    """Context manager turning validation on (or off) while functions are traced."""
    previous = is_enabled()
    _state.enabled = on
    try:
        yield
    finally:
        _state.enabled = previous


def check_finite(label: str, direction: str, value, log_det=None, index=None, inputs=None) -> None:
    """Raises `FloatingPointError` at run time if `value` or `log_det` holds NaN/inf.

    Only the layer that turns finite `inputs` into non-finite values reports, so the
    error names the culprit rather than every layer after it.

    Args:
      label: what produced the values, e.g. "chain[2] affine_coupling".
      direction: "forward", "inverse" or "input".
      value: the output array of the layer.
      log_det: the layer's log-det, or None.
      index: optional traced layer index (inside `stack`).
      inputs: the layer's input; if it is already non-finite, nothing is reported.
    """
    if not is_enabled():
        return
    inputs_ok = jnp.all(jnp.isfinite(inputs)) if inputs is not None else jnp.array(True)
    value_ok = jnp.all(jnp.isfinite(value)) | ~inputs_ok
    log_det_ok = jnp.all(jnp.isfinite(log_det)) | ~inputs_ok if log_det is not None else jnp.array(True)
    index = jnp.array(-1) if index is None else index
    report = functools.partial(_raise_if_not_finite, label, direction)
    jax.debug.callback(report, value_ok, log_det_ok, index)


def _raise_if_not_finite(label, direction, value_ok, log_det_ok, index):
    where = f"{label} {int(np.max(index))}" if np.max(index) >= 0 else label
    if not np.all(value_ok):
        what = "input" if direction == "input" else f"{direction} output"
        raise FloatingPointError(f"jaxflow validation: {what} of {where} contains NaN or inf.")
    if not np.all(log_det_ok):
        raise FloatingPointError(f"jaxflow validation: {direction} log_det of {where} contains NaN or inf.")
