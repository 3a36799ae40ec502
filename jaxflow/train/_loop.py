"""The loop shared by every `fit`: chunks of steps inside `lax.scan`, one host round trip per chunk.

A `fit` builds a jitted `run_chunk(state, length) -> (state, infos)` that takes
`length` steps on device (usually with `scan_steps`) and hands it to `run`, which
calls it until `num_steps` are done, copies each chunk's `StepInfo` to the host
once, updates a tqdm progress bar and calls the callbacks.

Callbacks are the hook for anything that runs between chunks (validation and
early stopping, checkpoints, logging):

    callback(state: TrainState, history: dict[str, np.ndarray]) -> bool | None

`history` holds the steps done so far ("loss", "grad_norm", "skipped", one entry
per step). Every callback is called after every chunk; if any returns True,
training stops after that chunk.

Checkpoints (`jaxflow.checkpoint`) are written after the callbacks: every
`checkpoint_every` steps (rounded up to whole chunks), when a callback stops
training, and after the last chunk. Chunks end on multiples of `chunk_size` (a run
resumed from another step first takes the steps up to the next one), so validation
and checkpoints keep their cadence across resumptions. A fit resumes from the newest
checkpoint by passing its state and history back to `run` (`run_resumable` does
both), which then carries on from there: as every key and batch is a function of the
step number alone, the resumed run takes exactly the steps the uninterrupted one
would have taken.
"""

from __future__ import annotations

import functools
import hashlib
import os
import time
import warnings
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from tqdm.auto import tqdm

from jaxflow.bijectors._checks import is_positive_int
from jaxflow.train import sharding
from jaxflow.train._step import StepInfo, TrainState

Callback = Callable[[TrainState, dict], "bool | None"]
Save = Callable[[TrainState, dict], None]
RunChunk = Callable[[TrainState, int], "tuple[TrainState, StepInfo]"]

ON_NONFINITE = ("skip", "raise")
# One bad batch in a hundred is what skipping is for; beyond it the steps taken are a biased subset.
MAX_SKIPPED_SHARE = 0.01


def scan_steps(step: Callable, state: TrainState, inputs) -> tuple[TrainState, StepInfo]:
    """Applies `step(state, *x)` for each `x` in `inputs` (a tuple of arrays with a leading step axis)."""
    return jax.lax.scan(lambda state, x: step(state, *x), state, inputs)


def step_keys(key, steps) -> jax.Array:
    """`fold_in(key, t)` for each step number t in `steps`: a step's draws depend on its number alone."""
    return jax.vmap(functools.partial(jax.random.fold_in, key))(steps)


def check_options(num_steps: int, chunk_size: int, on_nonfinite: str) -> None:
    """Raises ValueError for options no fit accepts."""
    if on_nonfinite not in ON_NONFINITE:
        raise ValueError(f"on_nonfinite must be one of {ON_NONFINITE}, got {on_nonfinite!r}.")
    if not (is_positive_int(num_steps) and is_positive_int(chunk_size)):
        raise ValueError(f"num_steps and chunk_size must be positive ints, got {num_steps!r} and {chunk_size!r}.")


def run(
    run_chunk: RunChunk,
    state: TrainState,
    num_steps: int,
    *,
    chunk_size: int = 100,
    progress: bool = True,
    on_nonfinite: str = "skip",
    callbacks: Sequence[Callback | None] = (),
    description: str = "fit",
    history: dict | None = None,
    save: Save | None = None,
    checkpoint_every: int = 1000,
    warning_stacklevel: int = 3,
) -> tuple[TrainState, dict]:
    """Runs steps in chunks of `chunk_size` until `num_steps` steps are done.

    Args:
      run_chunk: jitted `(state, length) -> (state, infos)`, `infos` a `StepInfo`
        with a leading axis of `length`. `length` is static: a last, shorter
        chunk compiles once more.
      state: the starting `TrainState`.
      num_steps: steps to have taken in all (fewer if a callback stops training).
      chunk_size: steps per host round trip.
      progress: show a tqdm bar with the loss and steps/s, updated per chunk.
      on_nonfinite: "skip" counts skipped steps in the history (a RuntimeWarning if more
        than `MAX_SKIPPED_SHARE` of the steps were); "raise" raises FloatingPointError
        naming the first skipped step, after its chunk.
      callbacks: called after every chunk as described in the module docstring
        (None entries are ignored).
      description: label of the progress bar.
      history: the per-step history of the steps `state` has already taken
        (when resuming from a checkpoint); None for a fresh start.
      save: `(state, history) -> None`, writes a checkpoint (see the module docstring).
      checkpoint_every: steps between checkpoints, rounded up to a multiple of `chunk_size`.
      warning_stacklevel: the frame warnings point at (3: the caller of the fit calling `run`).

    Returns:
      `(state, history)`: the final state, and numpy arrays "loss", "grad_norm",
      "skipped" (one entry per step run) and "num_skipped" (a count).
    """
    check_options(num_steps, chunk_size, on_nonfinite)
    callbacks = [c for c in callbacks if c is not None]
    if int(checkpoint_every) < 1:
        raise ValueError(f"checkpoint_every must be a positive number of steps, got {checkpoint_every}.")
    checkpoint_every = -(-int(checkpoint_every) // chunk_size) * chunk_size
    done, history = _history_from(history, num_steps)
    first_step = int(state.step) - done
    stop = False
    with tqdm(total=num_steps, initial=done, desc=description, unit="step", disable=not progress) as bar:
        while done < num_steps and not stop:
            length = min(chunk_size - done % chunk_size, num_steps - done)
            start = time.perf_counter()
            state, infos = run_chunk(state, length)
            infos = jax.device_get(infos)
            steps_per_s = length / (time.perf_counter() - start)
            for name, values in zip(StepInfo._fields, infos):
                history[name][done : done + length] = values
            if on_nonfinite == "raise" and infos.skipped.any():
                raise _nonfinite_error(first_step + done, infos)
            done += length
            bar.update(length)
            bar.set_postfix(loss=f"{_mean_finite(infos.loss):.4g}", steps_per_s=f"{steps_per_s:.0f}")
            so_far = {name: values[:done] for name, values in history.items()}
            stops = [callback(state, so_far) for callback in callbacks]  # every callback runs, even after a stop
            stop = any(stops)
            if save is not None and (stop or done == num_steps or done % checkpoint_every == 0):
                save(state, so_far)
    history = {name: values[:done] for name, values in history.items()}
    history["num_skipped"] = np.asarray(history["skipped"].sum())
    _warn_of_skipped_steps(description, history["skipped"], first_step, warning_stacklevel + 1)
    return state, history


def _warn_of_skipped_steps(description: str, skipped: np.ndarray, first_step: int, stacklevel: int) -> None:
    """A RuntimeWarning when more than `MAX_SKIPPED_SHARE` of the steps were skipped: what they fit is biased."""
    count, done = int(skipped.sum()), skipped.size
    if count <= MAX_SKIPPED_SHARE * done:
        return
    if count == done:
        what = (
            f"every one of the {done} steps was skipped (loss, gradient or updated params not finite), so the "
            "params are the initial ones"
        )
    else:
        what = (
            f"{count} of the {done} steps were skipped (loss, gradient or updated params not finite; the first at "
            f"step {first_step + int(np.argmax(skipped))}), so the params were fitted to the batches or draws that "
            "gave finite values alone, a biased subset (a target of -inf somewhere its flow puts mass? map the flow "
            "into the target's support with a constraining bijector)"
        )
    warnings.warn(
        f"{description}: {what}; pass on_nonfinite='raise' to stop at the first such step.",
        RuntimeWarning,
        stacklevel=stacklevel,
    )


def run_resumable(
    run_chunk: RunChunk, state: TrainState, num_steps: int, *, key, origin: str, checkpoint_dir=None,
    checkpoint_every: int = 1000, mesh=None, **options,
) -> tuple[TrainState, dict]:
    """`run` from the newest checkpoint in `checkpoint_dir` of the run started with `key`, else from `state`.

    The state is replicated over `mesh` (if any) and checkpoints are written as `run` says,
    recording `origin` (see `origin_of`); `options` are `run`'s other keyword arguments.
    """
    snapshot = resume(checkpoint_dir, key, state, origin=origin)
    return run(
        run_chunk,
        sharding.replicate(state if snapshot is None else snapshot.state, mesh),
        num_steps,
        history=None if snapshot is None else snapshot.history,
        save=saver(checkpoint_dir, key, origin=origin),
        checkpoint_every=checkpoint_every,
        warning_stacklevel=4,
        **options,
    )


def _history_from(previous: dict | None, num_steps: int) -> tuple[int, dict]:
    """(steps done, per-step history arrays of length `num_steps` holding `previous` at the start)."""
    history = {"loss": np.empty(num_steps), "grad_norm": np.empty(num_steps), "skipped": np.zeros(num_steps, bool)}
    if previous is None:
        return 0, history
    done = len(previous["loss"])
    if done > num_steps:
        raise ValueError(f"the run to resume has taken {done} steps already, more than num_steps={num_steps}.")
    for name, values in history.items():
        values[:done] = previous[name]
    return done, history


def origin_of(fit: str, flow, problem: str | None = None) -> str:
    """What a fit's checkpoints record of the run: the fit, the flow's layers (by name), base and, given
    a `problem` (its data, target or teacher, which `jaxflow.checkpoint` reads after ", data "), draws.

    Names alone do not tell flows apart whose params look alike: permutations of another seed, a
    spline's bound, Flow++'s closed form. Their `reference_draws` do (to 3 significant digits,
    as `rounded`, so that a run resumed on other hardware matches).
    """
    run = f"{fit} of {flow.bijector.name} on a {flow.base.name} base"
    if problem is None:
        return run
    return f"{run} (draws blake2b {digest(*map(rounded, reference_draws(flow)))}), data {problem}"


NUM_REFERENCE_DRAWS = 4


def reference_draws(flow) -> tuple[jax.Array, jax.Array]:
    """(x, log q): `NUM_REFERENCE_DRAWS` draws of `flow` at fixed params, the same for every call.

    The params are `flow.init(key(0))` moved by 0.1 N(0, 1) per entry: fresh layers are often
    the identity, under which flows that differ (in their permutations, say) agree. A
    conditional flow draws at a zero context.
    """
    flat, unravel = ravel_pytree(flow.init(jax.random.key(0)))
    params = unravel(flat + 0.1 * jax.random.normal(jax.random.key(1), flat.shape, flat.dtype))
    context = None if flow.context_shape is None else jnp.zeros(flow.context_shape)
    return flow.sample_and_log_prob(params, jax.random.key(2), (NUM_REFERENCE_DRAWS,), context)


def rounded(values) -> np.ndarray:
    """`values` as float64, each to 3 significant digits: equal on hardware that rounds differently."""
    return np.array([float(f"{value:.3g}") for value in np.ravel(np.asarray(values, np.float64))])


def data_record(*arrays) -> str:
    """dtype[shape] of each array given (None skipped) and a hash of their bytes, for an origin."""
    arrays = [np.asarray(array) for array in arrays if array is not None]  # one host copy each
    return f"{' '.join(f'{array.dtype}{list(array.shape)}' for array in arrays)} blake2b {digest(*arrays)}"


def digest(*arrays) -> str:
    """A blake2b hash (16 hex digits) of the bytes of the arrays given (None skipped), any dtype."""
    hashed = hashlib.blake2b(digest_size=8)
    for array in arrays:
        if array is not None:
            hashed.update(np.ascontiguousarray(np.asarray(array)).reshape(-1).view(np.uint8))  # bfloat16 included
    return hashed.hexdigest()


def resume(directory, key, state: TrainState, extra=None, *, origin: str):
    """The `jaxflow.checkpoint.Snapshot` to continue a fit from: the newest in `directory`.

    None if `directory` is None or holds no complete checkpoint.

    Raises:
      ValueError: if the checkpoint is of another model or optimizer (see
        `jaxflow.checkpoint.restore`), was written by another fit or flow, or fitted
        to another problem (data, target or teacher), than `origin` says, or by a run
        started with another key.
    """
    if directory is None:
        return None
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise ValueError(f"checkpoint_dir must be a directory (or a path to create one), got the file {directory}.")
    from jaxflow import checkpoint  # orbax takes seconds to import: only when checkpoints are asked for

    checkpoint.check_saveable(state, "the training state (params and optimizer state)")
    if checkpoint.latest(directory) is None:
        return None
    snapshot = checkpoint.restore(directory, state, extra=extra, origin=origin)
    if not _same_key(snapshot.key, key):
        raise ValueError(
            f"the checkpoint in {directory} belongs to a run started with another key; pass that run's key to "
            "resume it, or a fresh checkpoint_dir to start a new run."
        )
    on_device = lambda tree: jax.tree.map(jnp.asarray, tree)  # noqa: E731
    return snapshot._replace(state=on_device(snapshot.state), extra=on_device(snapshot.extra))


def saver(
    directory, key, extras: Callable[[TrainState], tuple[dict, object]] | None = None, *, origin: str
) -> Save | None:
    """`save(state, history)` writing a checkpoint of the run started with `key` to `directory` (None: no saver).

    `extras(state) -> (more_history, extra)` adds what else the fit needs to
    resume (e.g. the validation losses and the best params so far); `origin` is recorded.
    """
    if directory is None:
        return None
    from jaxflow import checkpoint  # orbax takes seconds to import: only when checkpoints are asked for

    def save(state: TrainState, history: dict) -> None:
        more_history, extra = ({}, None) if extras is None else extras(state)
        checkpoint.save(directory, checkpoint.Snapshot(state, key, history | more_history, extra, origin))

    return save


def _same_key(a, b) -> bool:
    a, b = _key_data(a), _key_data(b)
    return a.shape == b.shape and bool(np.all(a == b))


def _key_data(key) -> np.ndarray:
    return np.asarray(jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key)


def _nonfinite_error(chunk_start: int, infos: StepInfo) -> FloatingPointError:
    index = int(np.argmax(infos.skipped))
    return FloatingPointError(
        f"step {chunk_start + index}: the loss ({infos.loss[index]}) or the gradient (norm {infos.grad_norm[index]}) "
        "is not finite; the step was not applied. Check the data or log-density, lower the learning rate, set "
        "clip_norm=..., or pass on_nonfinite='skip' to skip such steps."
    )


def _mean_finite(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("nan")
