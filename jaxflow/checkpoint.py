"""Checkpoints of a training run, written with orbax, so that a killed run can resume where it stopped.

    checkpoint.save(directory, checkpoint.Snapshot(state, key, history), keep=3)
    checkpoint.latest(directory)                            # the newest complete step, or None
    snapshot = checkpoint.restore(directory, init_state(params, optimizer))

`forward_kl.fit` and `reverse_kl.fit` do this for you with `checkpoint_dir=...`.

Each save is one step directory written by `orbax.checkpoint.CheckpointManager`:
orbax writes it under a temporary name (`<step>.orbax-checkpoint-tmp-*`) and
renames it once complete, so a save cut short by a crash leaves only a
temporary directory, which is never read (and may be deleted).
A checkpoint holds arrays (tensorstore) and JSON, nothing else: loading one
runs no code (no pickle). Saving copies every leaf to the host (`np.asarray`),
which suits one process, its arrays on one device or replicated over a mesh.

    arrays/  the leaves of the train state and of `extra`, in tree order, and
             the history arrays (orbax cannot store empty ones: those are
             rebuilt from their shape in `meta`)
    meta/    JSON: format, jaxflow version, the params fingerprint, the path,
             shape and dtype of every leaf and history array, the PRNG key and
             the snapshot's origin (which fit of which flow wrote it)

Restoring needs a template, e.g. the freshly initialised `TrainState`: the
checkpoint's leaves are compared with the template's path by path before the
restore (and the restored arrays again after it), and any difference in tree
structure, shape or dtype raises a ValueError naming the leaf. orbax alone
would silently truncate or pad an array into a template of another shape.
Two models can share every leaf (MAF and IAF layers of one size), so the fits
also record and compare an origin, e.g. "forward_kl.fit of stack(chain(...))",
followed by ", data <record>" where the fit records the data it fits.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from typing import Any, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp

import jaxflow

FORMAT = 1
MAX_LISTED_DIFFERENCES = 5


class Snapshot(NamedTuple):
    """What one checkpoint holds.

    Attributes:
      state: the train state (any pytree of arrays; a `TrainState` in the fits).
      key: the run's PRNG key (a typed key or a legacy uint32 key).
      history: name -> numpy array, the history so far.
      extra: any other pytree of arrays the run needs to resume (None for none).
      origin: what wrote it, e.g. which fit of which flow (None: not recorded).
    """

    state: Any
    key: jax.Array
    history: dict
    extra: Any = None
    origin: str | None = None


def save(directory, snapshot: Snapshot, *, keep: int = 3) -> int:
    """Writes `snapshot` at the step of `snapshot.state.step` and deletes all but the newest `keep` checkpoints.

    The save is synchronous: when it returns, the checkpoint is complete.

    Returns:
      the step saved.
    """
    if int(keep) < 1:
        raise ValueError(f"keep must be a positive number of checkpoints, got {keep}.")
    step = _step_of(snapshot.state)
    tree = {"state": snapshot.state, "extra": snapshot.extra}
    history = {name: np.asarray(values) for name, values in snapshot.history.items()}
    meta = {
        "format": FORMAT,
        "jaxflow_version": jaxflow.__version__,
        "params_fingerprint": fingerprint(_params_of(snapshot.state)),
        "leaves": _listing(tree),
        "history": {name: _describe(values) for name, values in history.items()},
        "key": _key_to_json(snapshot.key),
        "origin": snapshot.origin,
    }
    arrays = {
        "leaves": [np.asarray(leaf) for leaf in jax.tree.leaves(tree)],
        "history": {name: values for name, values in history.items() if values.size},
    }
    with _manager(directory, keep=int(keep)) as manager:
        args = ocp.args.Composite(arrays=ocp.args.StandardSave(arrays), meta=ocp.args.JsonSave(meta))
        manager.save(step, args=args, force=True)
    return step


def latest(directory) -> int | None:
    """The step of the newest complete checkpoint in `directory`, None if there is none (or no directory)."""
    if not os.path.isdir(directory):
        return None
    with _manager(directory) as manager:
        return manager.latest_step()


_DATA = ", data "
_DRAWS = " (draws "  # what follows a fit's flow in its origin (`jaxflow.train._loop.origin_of`)


def _origin_refusal(saved: str | None, expected: str | None) -> str | None:
    """Why a checkpoint recording origin `saved` cannot resume a run of origin `expected`; None if it can."""
    if expected is None or saved is None or saved == expected:
        return None
    run, _, data = expected.partition(_DATA)
    saved_run, _, saved_data = saved.partition(_DATA)
    if _DRAWS not in saved_run:  # written before fits recorded their flow's draws
        run = run.partition(_DRAWS)[0]
    elif saved_run.partition(_DRAWS)[0] == run.partition(_DRAWS)[0] and saved_run != run:
        return (
            f"was written by a flow of the same layers that draws otherwise at fixed params (other permutations, "
            f"a spline's bound, ...): {saved_run}; this run's flow: {run}"
        )
    if saved_run != run or (saved_data and not data):
        return f"was written by {saved}; this run is {expected}"
    if saved_data and saved_data != data:
        return f"was fitted to another problem ({saved_data}; this run's: {data})"
    return None  # the same, or written before the fit recorded its data


def restore(directory, state, *, extra=None, step: int | None = None, origin: str | None = None) -> Snapshot:
    """The snapshot at `step` (default: the newest) in `directory`, shaped like the templates `state` and `extra`.

    Args:
      directory: where `save` wrote.
      state: a template of the saved state, e.g. the freshly initialised `TrainState`.
      extra: a template of the saved `extra` (None if none was saved).
      step: which checkpoint; None for the newest.
      origin: the origin the checkpoint must record (None: any). A checkpoint that
        records none (written before jaxflow recorded origins), or only the part of
        `origin` before its ", data ..." (written before fits recorded their data),
        is accepted.

    Returns:
      the `Snapshot`, its arrays as numpy arrays of the templates' dtypes.

    Raises:
      FileNotFoundError: if there is no complete checkpoint (at `step`).
      ValueError: if the checkpoint's leaves differ from the templates' in
        structure, shape or dtype (the message names the leaves), it records
        another origin, or it was written in another format.
    """
    step = latest(directory) if step is None else int(step)
    if step is None or not os.path.isdir(directory):
        raise FileNotFoundError(f"no complete checkpoint in {os.path.abspath(directory)}.")
    with _manager(directory) as manager:
        if step not in manager.all_steps():
            raise FileNotFoundError(f"no complete checkpoint at step {step} in {os.path.abspath(directory)}.")
        where = f"checkpoint {os.path.join(os.path.abspath(directory), str(step))}"
        if not os.path.isdir(os.path.join(directory, str(step), "meta")):
            raise ValueError(f"{where} holds no jaxflow checkpoint (no meta/); move it out of the directory.")
        meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        if meta.get("format") != FORMAT:
            raise ValueError(f"{where} has format {meta.get('format')!r}; this jaxflow reads format {FORMAT}.")
        saved_origin = meta.get("origin")
        refusal = _origin_refusal(saved_origin, origin)
        if refusal is not None:
            raise ValueError(f"{where} {refusal}. Pass a fresh directory to start a new run.")
        template = {"state": state, "extra": extra}
        _check_same_leaves(where, meta, template)
        empty_history = {name: np.zeros(shape, dtype) for name, (shape, dtype) in meta["history"].items()}
        arrays_template = {
            "leaves": [np.zeros(*_shape_and_dtype(leaf)) for leaf in jax.tree.leaves(template)],
            "history": {name: values for name, values in empty_history.items() if values.size},
        }
        arrays = manager.restore(step, args=ocp.args.Composite(arrays=ocp.args.StandardRestore(arrays_template)))
    restored = jax.tree.unflatten(jax.tree.structure(template), arrays["arrays"]["leaves"])
    _check_same_leaves(where, meta, restored)
    history = empty_history | arrays["arrays"].get("history", {})
    return Snapshot(restored["state"], _key_from_json(meta["key"]), history, restored["extra"], saved_origin)


def check_saveable(tree, what: str) -> None:
    """ValueError unless `save` can write every leaf of `tree`: typed PRNG keys and empty arrays it cannot.

    Fits call it before their first step, not at their first checkpoint, after a chunk of training.
    """
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        name = jax.tree_util.keystr(path, simple=True, separator="/")
        if jax.dtypes.issubdtype(getattr(leaf, "dtype", None), jax.dtypes.prng_key):
            raise ValueError(
                f"checkpoints cannot save {what}: its leaf {name} is a PRNG key (an optimizer that draws noise, "
                "such as optax.noisy_sgd?); train without checkpoint_dir, or keep the key out of the state."
            )
        if np.size(leaf) == 0:
            raise ValueError(f"checkpoints cannot save {what}: its leaf {name} is empty (shape {np.shape(leaf)}).")


def fingerprint(params) -> str:
    """A short hash of the tree structure, leaf shapes and dtypes of `params` (not of their values)."""
    text = json.dumps(_listing(params), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _listing(tree) -> dict[str, list]:
    """Leaf path -> [shape, dtype] for every leaf of `tree`."""
    return {
        jax.tree_util.keystr(path, simple=True, separator="/"): _describe(leaf)
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def _describe(leaf) -> list:
    shape, dtype = _shape_and_dtype(leaf)
    return [list(shape), dtype.name]


def _shape_and_dtype(leaf) -> tuple[tuple[int, ...], np.dtype]:
    return np.shape(leaf), np.dtype(leaf.dtype if hasattr(leaf, "dtype") else np.asarray(leaf).dtype)


@contextlib.contextmanager
def _manager(directory, *, keep: int | None = None):
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=False, create=True)
    manager = ocp.CheckpointManager(os.path.abspath(os.fspath(directory)), options=options)
    try:
        yield manager
    finally:
        manager.close()


def _check_same_leaves(where: str, meta: dict, template: dict) -> None:
    """Raises a ValueError listing the leaves where the checkpoint's `meta` and `template` differ."""
    saved, expected = meta["leaves"], _listing(template)
    if saved == expected:
        if list(saved) != list(expected):  # leaves are restored by position
            raise ValueError(
                f"{where} holds the template's leaves in another order (checkpoint: {', '.join(saved)}; template: "
                f"{', '.join(expected)}): a NamedTuple where the run had a dict, or the reverse?"
            )
        return
    expected_fingerprint = fingerprint(_params_of(template["state"]))
    params_first = lambda path: (not path.startswith("state/params/"), path)  # noqa: E731
    every_path = sorted(saved.keys() | expected.keys(), key=params_first)
    paths = [path for path in every_path if saved.get(path) != expected.get(path)]
    differences = [
        f"{path}: {_spec(saved.get(path))} in the checkpoint, {_spec(expected.get(path))} in the template"
        for path in paths
    ]
    if meta["params_fingerprint"] != expected_fingerprint:
        model = "a different model"
    elif all(path.split("/")[0] == "extra" for path in paths):
        model = (
            "the same model and optimizer with other extras (e.g. the best params a run with a validation set "
            "keeps: resume with the validation settings the run had)"
        )
    else:
        model = "a model with the same params but different other leaves (another optimizer?)"
    listed = "; ".join(differences[:MAX_LISTED_DIFFERENCES])
    unlisted = len(differences) - MAX_LISTED_DIFFERENCES
    more = f"; and {unlisted} more" if unlisted > 0 else ""
    raise ValueError(
        f"{where} was written for {model} (params fingerprint {meta['params_fingerprint']}, the template's "
        f"{expected_fingerprint}); differing leaves: {listed}{more}."
    )


def _spec(description) -> str:
    if description is None:
        return "absent"
    shape, dtype = description
    return f"{dtype}{tuple(shape)}"


def _params_of(state):
    return getattr(state, "params", state)


def _step_of(state) -> int:
    step = getattr(state, "step", None)
    if step is None or np.ndim(step) != 0:
        raise TypeError(f"the state to save needs a scalar `step` (a TrainState), got {type(state).__name__}.")
    return int(step)


def _key_to_json(key) -> dict:
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        return {"impl": str(jax.random.key_impl(key)), "data": np.asarray(jax.random.key_data(key)).tolist()}
    return {"impl": None, "data": np.asarray(key).tolist()}


def _key_from_json(saved: dict) -> jax.Array:
    data = np.asarray(saved["data"], np.uint32)
    return data if saved["impl"] is None else jax.random.wrap_key_data(data, impl=saved["impl"])
