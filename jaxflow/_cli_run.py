"""Runs of `jaxflow fit`: training with checkpoints, and run directories that are never half-written.

A run directory RUN holds

    config.json    the flow and its options, the columns, the data's shape and hash,
                   the standardisation (float64 mean and sd: the flow sees (x - mean) / sd),
                   the training options and step budget
    params.npz     the fitted params: one array per pytree leaf, "leaf_00000", ...
                   in `jax.tree.leaves` order (read with allow_pickle=False)
    history.json   per-step loss (in the data's units), gradient norm and skipped flag; validation losses;
                   best step; whether early stopping ended the run
    checkpoints/   the newest training checkpoints (`jaxflow.checkpoint`, written by
                   `forward_kl.fit(checkpoint_dir=...)`, each complete or ignored)

`fit` never writes into RUN itself. It works in RUN.tmp-<pid>: config.json first,
then checkpoints while it trains. At the end it writes params.npz and history.json
and renames the folder to RUN (an existing RUN is first renamed to RUN.old-<pid>,
then deleted). So RUN, when it exists, is complete.

Resume: `fit` with the same data and options (the step budget may differ) looks at
RUN and at every RUN.tmp-<pid> left by a process that no longer runs, and resumes
with the most advanced checkpoint among them (adopting a left-over folder by
renaming it to its own RUN.tmp-<pid>). A complete RUN whose budget is reached, or
that stopped early, is reported as complete. A RUN.tmp-<pid> of a live process is
an error: two fits never write one run.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import zipfile
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np
import optax

from jaxflow._cli_io import CliError, atomic_write
from jaxflow.train import forward_kl

FORMAT = "jaxflow-run-3"
# Format 1 chained the standardisation into the flow (another params tree) and drew coupling
# permutations that could leave entries untransformed; format 2 kept every dense layer's weights
# as (in, out) (`conditioners.Dense` now stores a narrowing layer's as (out, in)): their runs are
# refused, not misread.
EARLIER_FORMATS = ("jaxflow-run", "jaxflow-run-2")
CONFIG, PARAMS, HISTORY, CHECKPOINTS = "config.json", "params.npz", "history.json", "checkpoints"
NOT_IDENTITY = ("budget", "checkpoint_every", "jaxflow_version", "data_path")  # may change when resuming


class Staged(NamedTuple):
    """Where `fit` works, and the step of the checkpoint it continues from (None: from scratch)."""

    directory: Path
    step: int | None


def train(model, config: dict, train_rows, valid_rows, directory: Path, progress: bool) -> tuple[dict, dict]:
    """`forward_kl.fit` of `model` to the standardised rows, with checkpoints in directory/checkpoints (resuming from
    the newest); (params, history.json)."""
    options = config["training"]
    init_key, fit_key = jax.random.split(jax.random.key(options["seed"]))
    resuming = (directory / CHECKPOINTS).is_dir()
    try:
        params, history = forward_kl.fit(
            fit_key, model, model.init(init_key), standardise(config, train_rows),
            optimizer=optax.adam(options["learning_rate"]), clip_norm=options["clip_norm"],
            batch_size=options["batch_size"], num_steps=config["budget"]["num_steps"], validation_fraction=0.0,
            validation_data=None if valid_rows is None else standardise(config, valid_rows),
            patience=options["patience"], chunk_size=options["eval_every"], progress=progress,
            checkpoint_dir=directory / CHECKPOINTS, checkpoint_every=config["checkpoint_every"],
        )
    except ValueError as error:  # a checkpoint beyond the step budget, or one of another model
        raise CliError(f"cannot resume from {directory / CHECKPOINTS}: {error}" if resuming else str(error)) from None
    return params, _history_json(history, config["budget"]["num_steps"], -standardise_log_det(config))


def standardise(config: dict, rows, dtype=np.float32) -> np.ndarray:
    """Rows in the flow's units, (rows - mean) / sd computed in float64 (in float32, a column like
    1e7 + N(0, 0.5^2) would be rounded to a few values before it is scaled), then cast to `dtype`."""
    mean, sd = _scaling(config)
    with np.errstate(over="ignore"):
        return ((np.asarray(rows, np.float64) - mean) / sd).astype(dtype)


def within_float32(z) -> np.ndarray:
    """Elementwise: whether standardised values are finite in float32, the flow's precision."""
    return np.abs(z) <= np.finfo(np.float32).max


def standardisation(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, sd) per column, computed on rows divided by each column's largest magnitude, so that
    neither the squares of values beyond 1e154 overflow nor those of values below 1e-154 underflow."""
    magnitude = np.max(np.abs(rows), axis=0)
    magnitude = np.where(magnitude > 0, magnitude, 1.0)
    scaled = rows / magnitude
    return scaled.mean(axis=0) * magnitude, scaled.std(axis=0) * magnitude


def unstandardise(config: dict, z) -> np.ndarray:
    """float64 rows in the data's units from rows in the flow's, the inverse of `standardise`."""
    mean, sd = _scaling(config)
    return mean + sd * np.asarray(z, np.float64)


def standardise_log_det(config: dict) -> float:
    """log |det| of `standardise`, -sum(log sd): a density in the data's units is the flow's times exp of this."""
    return float(-np.log(_scaling(config)[1]).sum())


def _scaling(config: dict) -> tuple[np.ndarray, np.ndarray]:
    scaling = config["standardisation"]
    return np.asarray(scaling["mean"], np.float64), np.asarray(scaling["sd"], np.float64)


def _history_json(history: dict, num_steps: int, shift: float) -> dict:
    """history.json: per-step lists (null for a non-finite value), validation record, best step, early stop; the
    losses in the data's units, the flow's plus `shift`."""
    as_list = lambda values, plus=0.0: [float(v) + plus if np.isfinite(v) else None for v in values]  # noqa: E731
    summary = {
        "num_steps": len(history["loss"]),
        "stopped_early": len(history["loss"]) < num_steps,
        "loss": as_list(history["loss"], shift),
        "grad_norm": as_list(history["grad_norm"]),
        "skipped": history["skipped"].tolist(),
        "validation_loss": as_list(history["validation_loss"], shift),
        "validation_step": history["validation_step"].tolist(),
        "best_step": int(history["best_step"]),
    }
    steps = summary["validation_step"]
    if summary["best_step"] in steps:
        summary["best_validation_loss"] = summary["validation_loss"][steps.index(summary["best_step"])]
    return summary


def read_config(run) -> dict:
    """The config.json of a complete run; CliError if `run` is not one."""
    run = Path(run)
    try:
        config = json.loads((run / CONFIG).read_text())
    except (OSError, ValueError):
        config = None
    if isinstance(config, dict) and config.get("format") in EARLIER_FORMATS:
        raise CliError(
            f"{run} was written by an earlier jaxflow (run format {config['format']!r}, this one reads {FORMAT!r}), "
            "whose model this version builds differently; fit it again into a new directory"
        )
    if not isinstance(config, dict) or config.get("format") != FORMAT or not (run / PARAMS).is_file():
        raise CliError(f"{run} is not a jaxflow run directory (no {CONFIG} and {PARAMS} written by `jaxflow fit`)")
    return config


def write_json(path, obj) -> None:
    """Writes JSON atomically (temporary file, then rename)."""
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=1).encode()))


def save_arrays(path, arrays: dict) -> None:
    """Writes an .npz of named arrays atomically."""
    atomic_write(path, lambda f: np.savez(f, **arrays))


def load_arrays(path) -> dict:
    """The named arrays of an .npz; CliError if it cannot be read."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return dict(archive)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise CliError(f"{path}: unreadable ({error or 'no data'})") from None


def tree_arrays(prefix: str, tree) -> dict:
    """{f"{prefix}_00000": leaf, ...}, the leaves of a pytree as numpy arrays."""
    return {f"{prefix}_{i:05d}": np.asarray(leaf) for i, leaf in enumerate(jax.tree.leaves(tree))}


def arrays_tree(arrays: dict, prefix: str, template, what: str):
    """The inverse of `tree_arrays`, with `template`'s structure; CliError if shapes or counts differ."""
    leaves, treedef = jax.tree.flatten(template)
    stored = [arrays.get(f"{prefix}_{i:05d}") for i in range(len(leaves))]
    extra = sum(name.startswith(f"{prefix}_") for name in arrays) - len(leaves)
    if extra or any(a is None or a.shape != tuple(t.shape) for a, t in zip(stored, leaves)):
        raise CliError(f"{what} does not match the flow described in its {CONFIG} (different shapes or leaf count)")
    return jax.tree.unflatten(treedef, [np.asarray(a, dtype=t.dtype) for a, t in zip(stored, leaves)])


def stage(out, config: dict) -> Staged | None:
    """Prepares RUN.tmp-<pid> to fit `config` into `out`; None if `out` already holds that run, complete."""
    out = Path(out)
    if out.exists():
        finished = _read_complete(out, config)
        if finished["stopped_early"] or finished["num_steps"] >= config["budget"]["num_steps"]:
            return None
    candidates = [out] if out.exists() else []
    candidates += [folder for folder in _leftovers(out) if _same_run(folder, config)]
    directory = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    steps = {folder: _checkpoint_step(folder) for folder in candidates}
    best = max(steps, key=steps.get, default=None)
    step = steps.get(best, -1)
    if step > config["budget"]["num_steps"]:
        raise CliError(
            f"{best} holds this run at step {step}, beyond --steps {config['budget']['num_steps']}: give --steps "
            f"{step} or more to go on from there, or delete {best} to start again"
        )
    stale = directory.exists() and best != directory  # this process's pid, left by a killed fit before a restart
    if stale and not _same_run(directory, config):
        raise CliError(
            f"{directory} holds a killed fit of another run (another config) under this process's id; "
            "rename or delete it to fit here"
        )
    try:
        if stale:  # an earlier checkpoint of this run, behind `best`
            shutil.rmtree(directory)
        if best is None:
            directory.mkdir(parents=True)
        elif best == out:
            shutil.copytree(out, directory)
        else:
            os.rename(best, directory)
    except OSError as error:
        raise CliError(f"{out}: cannot create the run's folder ({error.strerror or error})") from None
    write_json(directory / CONFIG, config)
    return Staged(directory, None if step < 0 else step)


def publish(directory, out) -> None:
    """Moves a finished RUN.tmp-<pid> to `out`, replacing a previous run there."""
    out = Path(out)
    previous = out.with_name(f"{out.name}.old-{os.getpid()}")
    if out.exists():
        os.rename(out, previous)
    os.rename(directory, out)
    shutil.rmtree(previous, ignore_errors=True)


def _checkpoint_step(folder: Path) -> int:
    """The step of the newest complete checkpoint in a run folder, -1 if none."""
    from jaxflow import checkpoint  # imports orbax (seconds): only `fit` needs it

    step = checkpoint.latest(folder / CHECKPOINTS)
    return -1 if step is None else step


def _read_complete(out: Path, config: dict) -> dict:
    """The history of the complete run in `out`; CliError if `out` is something else or another run."""
    existing = read_config(out)
    changed = _differences(_identity(existing), _identity(config))
    if changed:
        raise CliError(
            f"{out} holds a different run (it differs in {', '.join(changed)}); "
            "give another --out, or delete it to start again"
        )
    return json.loads((out / HISTORY).read_text())


def _leftovers(out: Path) -> list[Path]:
    """The RUN.tmp-<pid> folders of processes that no longer run; CliError if a live process writes `out`."""
    folders = []
    for folder in out.parent.glob(f"{glob.escape(out.name)}.tmp-*"):
        pid = folder.name.rsplit("-", 1)[1]
        if not pid.isdigit():
            continue
        if int(pid) != os.getpid() and _is_running(int(pid)):  # our own pid: a killed run's, before a restart
            raise CliError(
                f"another process (pid {pid}) is writing {out}; wait for it, or delete {folder} if no jaxflow fit runs"
            )
        folders.append(folder)
    return folders


def _is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _same_run(folder: Path, config: dict) -> bool:
    try:
        existing = json.loads((folder / CONFIG).read_text())
    except (OSError, ValueError):
        return False
    return not _differences(_identity(existing), _identity(config))


def _identity(config: dict) -> dict:
    return {key: value for key, value in config.items() if key not in NOT_IDENTITY}


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted names of the entries that differ between two nested dicts."""
    changed = []
    for key in sorted(set(a) | set(b)):
        if isinstance(a.get(key), dict) and isinstance(b.get(key), dict):
            changed += _differences(a[key], b[key], f"{prefix}{key}.")
        elif a.get(key) != b.get(key):
            changed.append(f"{prefix}{key}")
    return changed
