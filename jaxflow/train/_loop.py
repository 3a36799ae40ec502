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
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import jax
import numpy as np
from tqdm.auto import tqdm

from jaxflow.train._step import StepInfo, TrainState

Callback = Callable[[TrainState, dict], "bool | None"]
RunChunk = Callable[[TrainState, int], "tuple[TrainState, StepInfo]"]

ON_NONFINITE = ("skip", "raise")


def scan_steps(step: Callable, state: TrainState, inputs) -> tuple[TrainState, StepInfo]:
    """Applies `step(state, *x)` for each `x` in `inputs` (a tuple of arrays with a leading step axis)."""
    return jax.lax.scan(lambda state, x: step(state, *x), state, inputs)


def check_options(num_steps: int, chunk_size: int, on_nonfinite: str) -> None:
    """Raises ValueError for options no fit accepts."""
    if on_nonfinite not in ON_NONFINITE:
        raise ValueError(f"on_nonfinite must be one of {ON_NONFINITE}, got {on_nonfinite!r}.")
    if int(num_steps) < 1 or int(chunk_size) < 1:
        raise ValueError(f"num_steps and chunk_size must be positive integers, got {num_steps} and {chunk_size}.")


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
) -> tuple[TrainState, dict]:
    """Runs `num_steps` steps in chunks of `chunk_size`.

    Args:
      run_chunk: jitted `(state, length) -> (state, infos)`, `infos` a `StepInfo`
        with a leading axis of `length`. `length` is static: a last, shorter
        chunk compiles once more.
      state: the starting `TrainState`.
      num_steps: steps to take (fewer if a callback stops training).
      chunk_size: steps per host round trip.
      progress: show a tqdm bar with the loss and steps/s, updated per chunk.
      on_nonfinite: "skip" counts skipped steps in the history; "raise" raises
        FloatingPointError naming the first skipped step, after its chunk.
      callbacks: called after every chunk as described in the module docstring
        (None entries are ignored).
      description: label of the progress bar.

    Returns:
      `(state, history)`: the final state, and numpy arrays "loss", "grad_norm",
      "skipped" (one entry per step run) and "num_skipped" (a count).
    """
    check_options(num_steps, chunk_size, on_nonfinite)
    callbacks = [c for c in callbacks if c is not None]
    history = {"loss": np.empty(num_steps), "grad_norm": np.empty(num_steps), "skipped": np.zeros(num_steps, bool)}
    first_step = int(state.step)
    done = 0
    with tqdm(total=num_steps, desc=description, unit="step", disable=not progress) as bar:
        while done < num_steps:
            length = min(chunk_size, num_steps - done)
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
            if any([callback(state, so_far) for callback in callbacks]):
                break
    history = {name: values[:done] for name, values in history.items()}
    history["num_skipped"] = np.asarray(history["skipped"].sum())
    return state, history


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
