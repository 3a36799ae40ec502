"""Opt-in validation: report NaN/inf values by layer name instead of propagating them.

    log_prob = jaxflow.validation.checked(flow.log_prob)
    log_prob(params, x)      # raises FloatingPointError naming the layer that produced NaN/inf

`checked` traces the function with validation on and runs it under `jax.experimental.checkify`,
JAX's functional error mechanism, so the checks work through `jit`, `vmap` and `lax.scan` inside
the function; wrap a transformed function (`checked(jax.jit(f))`): `checked` raises in Python and
cannot itself run under a trace. Under `jax.grad`, checks inside a loop (a `stack`, `Flow`'s
batch) are lost: validate the loss, not its gradient. Outside `checked`, nothing is added to the
computation. Under `checked`, `Flow` maps
the events of a batch with `lax.map` rather than `vmap` (checkify cannot check the `while_loop`s
of root finding and fixed-point inverses under `vmap`): a debug mode, slower on large batches.
"""

from __future__ import annotations

import contextlib
import functools
import re
import threading

import jax
import jax.numpy as jnp
from jax.experimental import checkify

_state = threading.local()
_CHECKIFY_SUFFIX = re.compile(r" \(`?check`? failed.*", re.DOTALL)  # where checkify's own text starts


def is_enabled() -> bool:
    return getattr(_state, "enabled", False)


@contextlib.contextmanager
def _enabled():
    previous = is_enabled()
    _state.enabled = True
    try:
        yield
    finally:
        _state.enabled = previous


def checked(fn):
    """Wraps `fn` so that NaN/inf produced by any jaxflow layer raises `FloatingPointError`.

    The message names the layer ("inverse output of chain[1] softplus", "forward output of
    stack(affine) layer 3"). A plain `fn` is traced afresh on each call. A jitted one,
    `checked(jax.jit(f))`, is compiled once with its checks, under a jit of its own: JAX
    shares one trace among every `jax.jit(f)`, and checks are added at trace time, so
    sharing it would leave the checks out (f traced before) or put them into plain calls of
    `jax.jit(f)` after (which then fail).
    """
    if callable(getattr(fn, "lower", None)) and callable(getattr(fn, "__wrapped__", None)):
        fn = jax.jit(functools.partial(fn.__wrapped__))  # a new callable: a trace cache of its own

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with _enabled():
            error, out = checkify.checkify(fn)(*args, **kwargs)
        message = error.get()
        if message is not None:
            raise FloatingPointError(_CHECKIFY_SUFFIX.sub("", message))
        return out

    return wrapper


@contextlib.contextmanager
def within(label: str, index):
    """At trace time, prefixes the labels of the checks traced inside with `label` and the traced `index`.

    A `stack` traces its layer inside `within(f"{name} layer", index)`, so that a check of a
    chain inside the loop names the loop's layer too ("stack(...) layer 3: chain[0] affine").
    """
    previous = getattr(_state, "scopes", ())
    _state.scopes = (*previous, (label, index))
    try:
        yield
    finally:
        _state.scopes = previous


def check_finite(label: str, direction: str, value, log_det=None, index=None, inputs=None) -> None:
    """Inside `checked`: fails if `value` or `log_det` holds NaN/inf produced from finite `inputs`.

    Only the layer that turns finite inputs into non-finite values reports, so the error
    names the culprit rather than every layer after it.

    Args:
      label: what produced the values, e.g. "chain[2] affine_coupling".
      direction: "forward", "inverse", "sample" or "log_prob" (of a base), or "input" and
        "context" (for data entering a flow).
      value: the output array of the layer.
      log_det: the layer's log-det, or None.
      index: optional traced layer index (inside `stack`).
      inputs: the layer's input; if it is already non-finite, nothing is reported.
    """
    if not is_enabled():
        return
    inputs_bad = ~jnp.all(jnp.isfinite(inputs)) if inputs is not None else jnp.array(False)
    what = direction if direction in ("input", "context") else f"{direction} output"
    scopes = [*getattr(_state, "scopes", ()), (label, index)]
    where = ": ".join(name if at is None else f"{name} {{layer{depth}}}" for depth, (name, at) in enumerate(scopes))
    kwargs = {f"layer{depth}": index for depth, (_, index) in enumerate(scopes) if index is not None}
    message = f"jaxflow validation: {what} of {where} contains NaN or inf."
    checkify.check(inputs_bad | jnp.all(jnp.isfinite(value)), message, **kwargs)
    if log_det is not None:
        message = f"jaxflow validation: {direction} log_det of {where} contains NaN or inf."
        checkify.check(inputs_bad | jnp.all(jnp.isfinite(log_det)), message, **kwargs)
