"""Checkpoints: round trips, keep-last-k, resume after a kill, half-written saves, refusal of other models."""

import json
import os
import runpy
import shutil
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxflow as jf
from jaxflow import checkpoint, flows
from jaxflow.train import distill, forward_kl, init_state, reverse_kl

# The same fit runs killed in a subprocess and resumed in this process: it lives in a file both can run.
FIT_SCRIPT = """
import jax
import numpy as np
import optax

import jaxflow as jf
from jaxflow.train import forward_kl


def run(checkpoint_dir=None, callback=None):
    flow = jf.Flow(jf.standard_normal(2), jf.bijectors.affine(2))  # N(0, I) at init
    rng = np.random.default_rng(0)
    data = (rng.normal(size=(400, 2)) * 0.5 + 1.0).astype(np.float32)
    # Fitting the data takes q away from N(0, I): the validation loss is best after the first chunk (step 10),
    # then worse, so patience=3 stops training after step 40.
    validation = rng.normal(size=(200, 2)).astype(np.float32)
    return forward_kl.fit(
        jax.random.key(1), flow, flow.init(jax.random.key(0)), data, validation_data=validation, patience=3,
        batch_size=32, num_steps=60, chunk_size=10, optimizer=optax.adam(1e-2), checkpoint_dir=checkpoint_dir,
        checkpoint_every=20, callback=callback, progress=False,
    )
"""

KILL_SCRIPT = """
import os
import signal
import sys

from fit import run


def kill_after_step_30(state, history):  # the checkpoint of step 20 is complete; step 30's is never written
    if len(history["loss"]) == 30:
        os.kill(os.getpid(), signal.SIGKILL)


run(sys.argv[1], kill_after_step_30)
"""


def affine_state(dim, step=0, optimizer=None):
    optimizer = optax.adam(1e-3) if optimizer is None else optimizer
    flow = jf.Flow(jf.standard_normal(dim), jf.bijectors.affine(dim))
    state = init_state(flow.init(jax.random.key(0)), optimizer)
    return state._replace(step=jnp.asarray(step, jnp.int32))


def a_snapshot(step):
    """A state with distinct values in every leaf, and a history with floats, bools and an empty array."""
    state = affine_state(3, step)
    distinct = lambda leaf: leaf + np.arange(leaf.size, dtype=leaf.dtype).reshape(leaf.shape) + step  # noqa: E731
    state = state._replace(params=jax.tree.map(distinct, state.params),
                           opt_state=jax.tree.map(distinct, state.opt_state))
    history = {
        "loss": np.linspace(0.0, 1.0, step, dtype=np.float32),
        "skipped": np.arange(step) % 7 == 3,
        "validation_loss": np.zeros(0),
    }
    return checkpoint.Snapshot(state, jax.random.key(step), history, extra={"best": state.params})


def assert_same_snapshot(restored, saved):
    jax.tree.map(np.testing.assert_array_equal, (restored.state, restored.extra), (saved.state, saved.extra))
    assert jax.tree.map(lambda a: a.dtype, restored.state) == jax.tree.map(lambda a: a.dtype, saved.state)
    assert restored.history.keys() == saved.history.keys()
    for name, values in saved.history.items():
        assert restored.history[name].dtype == values.dtype
        np.testing.assert_array_equal(restored.history[name], values)
    np.testing.assert_array_equal(jax.random.key_data(restored.key), jax.random.key_data(saved.key))


def test_round_trip_keeps_the_last_k(tmp_path):
    snapshots = {step: a_snapshot(step) for step in (10, 20, 30)}
    for snapshot in snapshots.values():
        checkpoint.save(tmp_path, snapshot, keep=2)
    assert sorted(os.listdir(tmp_path)) == ["20", "30"] and checkpoint.latest(tmp_path) == 30
    template = affine_state(3)
    extra = {"best": template.params}
    assert_same_snapshot(checkpoint.restore(tmp_path, template, extra=extra), snapshots[30])
    assert_same_snapshot(checkpoint.restore(tmp_path, template, extra=extra, step=20), snapshots[20])
    assert checkpoint.latest(tmp_path / "nothing here") is None


def test_a_checkpoint_is_arrays_and_json_without_pickles(tmp_path):
    checkpoint.save(tmp_path, a_snapshot(10))
    files = [os.path.join(root, name) for root, _, names in os.walk(tmp_path) for name in names]
    for path in files:
        with open(path, "rb") as f:
            head = f.read(2)
        assert not (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")), f"{path} is a pickle"
    (meta,) = [path for path in files if path.endswith(os.path.join("meta", "metadata"))]
    with open(meta) as f:
        meta = json.load(f)
    assert meta["history"]["skipped"] == [[10], "bool"] and meta["history"]["validation_loss"] == [[0], "float64"]
    assert meta["leaves"]["state/params/bijector/shift"] == [[3], "float32"]
    assert meta["params_fingerprint"] == checkpoint.fingerprint(affine_state(3).params)


def test_a_half_written_checkpoint_is_ignored(tmp_path):
    saved = a_snapshot(20)
    checkpoint.save(tmp_path, saved)
    checkpoint.save(tmp_path, a_snapshot(40))
    # What a save killed halfway leaves: the step's temporary directory, partly written, never renamed.
    interrupted = tmp_path / "40.orbax-checkpoint-tmp-1700000000"
    os.rename(tmp_path / "40", interrupted)
    shutil.rmtree(interrupted / "arrays")
    assert checkpoint.latest(tmp_path) == 20
    template = affine_state(3)
    assert_same_snapshot(checkpoint.restore(tmp_path, template, extra={"best": template.params}), saved)


def test_another_model_is_refused_naming_the_leaf(tmp_path):
    checkpoint.save(tmp_path, checkpoint.Snapshot(affine_state(2, 10), jax.random.key(0), {}))
    with pytest.raises(ValueError, match=r"different model.*state/opt_state/0/mu/bijector/log_scale: "
                                         r"float32\(2,\) in the checkpoint, float32\(3,\) in the template"):
        checkpoint.restore(tmp_path, affine_state(3))
    with pytest.raises(ValueError, match=r"another optimizer.*state/opt_state/0/mu/bijector/log_scale: float32\(2,\) "
                                         r"in the checkpoint, absent in the template"):
        checkpoint.restore(tmp_path, affine_state(2, optimizer=optax.sgd(1e-3)))
    with pytest.raises(ValueError, match=r"other extras.*extra/best/shift: absent in the checkpoint, float32\(2,\)"):
        checkpoint.restore(tmp_path, affine_state(2), extra={"best": affine_state(2).params["bijector"]})
    with pytest.raises(TypeError, match="scalar `step`"):
        checkpoint.save(tmp_path, checkpoint.Snapshot({"w": jnp.ones(2)}, jax.random.key(0), {}))
    with pytest.raises(FileNotFoundError, match="at step 7"):
        checkpoint.restore(tmp_path, affine_state(2), step=7)


def test_forward_kl_resumed_after_a_kill_ends_like_the_uninterrupted_run(tmp_path):
    (tmp_path / "fit.py").write_text(FIT_SCRIPT)
    (tmp_path / "kill.py").write_text(KILL_SCRIPT)
    directory = tmp_path / "checkpoints"
    killed = subprocess.run(
        [sys.executable, str(tmp_path / "kill.py"), str(directory)], cwd=tmp_path, capture_output=True, text=True,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert checkpoint.latest(directory) == 20

    run = runpy.run_path(str(tmp_path / "fit.py"))["run"]
    resumed_params, resumed = run(directory)
    params, history = run()
    assert history["loss"].shape == (40,) and history["best_step"] == 10  # early stopping, as designed
    assert checkpoint.latest(directory) == 40
    jax.tree.map(np.testing.assert_array_equal, resumed_params, params)  # the best params, from the checkpoint
    for name in ("loss", "grad_norm", "skipped", "validation_loss", "validation_step", "best_step"):
        np.testing.assert_array_equal(resumed[name], history[name])
    chunks = []
    again_params, again = run(directory, lambda state, history: chunks.append(1))
    assert not chunks and again["loss"].shape == (40,)  # an early-stopped run stays stopped
    jax.tree.map(np.testing.assert_array_equal, again_params, params)


def test_forward_kl_refuses_a_checkpoint_of_another_model_or_key(tmp_path):
    (tmp_path / "fit.py").write_text(FIT_SCRIPT)
    run = runpy.run_path(str(tmp_path / "fit.py"))["run"]
    run(tmp_path / "checkpoints", lambda state, history: True)  # stops (and saves) after the first chunk
    flow = jf.Flow(jf.standard_normal(2), jf.stack(jf.bijectors.affine(2), 2))
    data = np.ones((100, 2), np.float32)
    with pytest.raises(ValueError, match=r"written by forward_kl.fit of affine on a standard_normal base \(draws .*; "
                                         r"this run is forward_kl.fit of stack\(affine\)"):
        forward_kl.fit(jax.random.key(1), flow, flow.init(jax.random.key(0)), data, progress=False,
                                checkpoint_dir=tmp_path / "checkpoints")
    flow = jf.Flow(jf.standard_normal(2), jf.bijectors.affine(2))
    rng = np.random.default_rng(0)  # the script's data and validation set
    data = (rng.normal(size=(400, 2)) * 0.5 + 1.0).astype(np.float32)
    validation = rng.normal(size=(200, 2)).astype(np.float32)
    with pytest.raises(ValueError, match="another key"):
        forward_kl.fit(jax.random.key(2), flow, flow.init(jax.random.key(0)), data, validation_data=validation,
                       progress=False, checkpoint_dir=tmp_path / "checkpoints")


def reverse_kl_fit(**options):
    flow = jf.Flow(jf.standard_normal(2), jf.bijectors.affine(2))
    return reverse_kl.fit(
        jax.random.key(3), flow, flow.init(jax.random.key(0)), lambda x: -0.5 * jnp.sum((x - 1.0) ** 2),
        num_steps=50, chunk_size=10, anneal_steps=30, optimizer=optax.adam(1e-2), checkpoint_every=20,
        progress=False, **options,
    )


def distill_fit(**options):
    student = jf.Flow(jf.standard_normal(2), jf.bijectors.affine(2))
    teacher_params = {"base": (), "bijector": {"shift": jnp.array([1.0, -1.0]), "log_scale": jnp.array([-0.5, 0.3])}}
    return distill.fit(
        jax.random.key(3), student, student.init(jax.random.key(0)), student, teacher_params, num_samples=64,
        num_steps=50, chunk_size=10, optimizer=optax.adam(1e-2), checkpoint_every=20, progress=False, **options,
    )


@pytest.mark.parametrize("fit, extra_history", [(reverse_kl_fit, ("beta",)), (distill_fit, ())])
def test_reverse_kl_and_distillation_stopped_and_resumed_end_like_the_uninterrupted_run(tmp_path, fit, extra_history):
    params, history = fit()
    fit(checkpoint_dir=tmp_path, callback=lambda state, history: len(history["loss"]) == 30)
    assert sorted(os.listdir(tmp_path)) == ["20", "30"]  # every 20 steps, and where the callback stopped
    resumed_params, resumed = fit(checkpoint_dir=tmp_path)
    chunks = []
    again_params, again = fit(checkpoint_dir=tmp_path, callback=lambda state, history: chunks.append(1))
    assert checkpoint.latest(tmp_path) == 50 and not chunks  # a finished run is not trained further
    for result in ((resumed_params, resumed), (again_params, again)):
        jax.tree.map(np.testing.assert_array_equal, result[0], params)
        for name in ("loss", "grad_norm", "skipped", *extra_history):
            np.testing.assert_array_equal(result[1][name], history[name])


def test_reverse_kl_and_distillation_refuse_a_checkpoint_of_another_problem(tmp_path):
    # Both resumed such checkpoints silently before, mixing two problems in one history.
    flow = jf.Flow(jf.standard_normal(2), jf.bijectors.affine(2))
    params = flow.init(jax.random.key(0))
    options = dict(num_steps=10, chunk_size=10, progress=False)
    shifted_normal = lambda shift: lambda x: -0.5 * jnp.sum((x - shift) ** 2)  # noqa: E731
    reverse_kl.fit(jax.random.key(3), flow, params, shifted_normal(1.0), checkpoint_dir=tmp_path / "vi", **options)
    resume = dict(options, num_steps=20, checkpoint_dir=tmp_path / "vi")
    for log_target, other in ((shifted_normal(1.5), {}), (shifted_normal(1.0), dict(objective="iwae")),
                              (shifted_normal(1.0), dict(anneal_steps=5))):
        with pytest.raises(ValueError, match=r"another problem \(target blake2b \w+, elbo, beta 1 1 1 1 1; "):
            reverse_kl.fit(jax.random.key(3), flow, params, log_target, **resume | other)
    _, history = reverse_kl.fit(jax.random.key(3), flow, params, shifted_normal(1.0), **resume)  # a new closure
    assert len(history["loss"]) == 20

    teacher_params = {"base": (), "bijector": {"shift": jnp.array([1.0, -1.0]), "log_scale": jnp.zeros(2)}}
    distill.fit(jax.random.key(3), flow, params, flow, teacher_params, checkpoint_dir=tmp_path / "d", **options)
    other_teacher = jax.tree.map(lambda leaf: leaf + 0.5, teacher_params)
    with pytest.raises(ValueError, match=r"another problem \(teacher affine params blake2b \w+; this run's: teacher"):
        distill.fit(jax.random.key(3), flow, params, flow, other_teacher, checkpoint_dir=tmp_path / "d",
                    **options | dict(num_steps=20))


def test_a_run_extended_from_an_odd_step_keeps_to_the_chunk_grid(tmp_path):
    flow = jf.Flow(jf.standard_normal(2), jf.bijectors.affine(2))
    data = np.random.default_rng(0).normal(size=(200, 2)).astype(np.float32)

    def fit(num_steps, **options):
        return forward_kl.fit(
            jax.random.key(1), flow, flow.init(jax.random.key(0)), data, num_steps=num_steps, chunk_size=10,
            checkpoint_every=20, progress=False, checkpoint_dir=tmp_path, **options,
        )

    fit(25)
    assert sorted(map(int, os.listdir(tmp_path))) == [20, 25]
    chunk_ends = []
    _, history = fit(75, callback=lambda state, history: chunk_ends.append(len(history["loss"])))
    assert chunk_ends == [30, 40, 50, 60, 70, 75]  # the steps up to 30 first, then whole chunks
    assert sorted(map(int, os.listdir(tmp_path))) == [40, 60, 75]  # every 20 steps, and at the end
    np.testing.assert_array_equal(history["validation_step"], [10, 20, 25, 30, 40, 50, 60, 70, 75])


def test_a_checkpoint_of_another_flow_with_the_same_params_or_of_another_fit_is_refused(tmp_path):
    maf, iaf = (builder(2, layers=2, hidden=(8,)) for builder in (jf.flows.maf, jf.flows.iaf))
    data = np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32)
    options = dict(num_steps=10, chunk_size=10, progress=False, checkpoint_dir=tmp_path)
    forward_kl.fit(jax.random.key(1), maf, maf.init(jax.random.key(0)), data, **options)
    assert checkpoint.fingerprint(maf.init(jax.random.key(0))) == checkpoint.fingerprint(iaf.init(jax.random.key(0)))
    with pytest.raises(ValueError, match=r"written by forward_kl.fit of stack\(chain\(exp_affine_masked_autor.*"
                                         r"this run is forward_kl.fit of stack\(chain\(affine_inverse_autoregressive"):
        forward_kl.fit(jax.random.key(1), iaf, iaf.init(jax.random.key(0)), data, **options | dict(num_steps=20))
    with pytest.raises(ValueError, match=r"written by forward_kl.fit .* this run is reverse_kl.fit"):
        reverse_kl.fit(jax.random.key(1), maf, maf.init(jax.random.key(0)), lambda x: -0.5 * jnp.sum(x**2),
                       **options | dict(num_steps=20))


def test_a_checkpoint_of_a_fit_to_other_data_is_refused(tmp_path):
    flow = jf.Flow(jf.standard_normal(2), jf.bijectors.affine(2))
    data = np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32)
    options = dict(num_steps=10, chunk_size=10, progress=False, checkpoint_dir=tmp_path, validation_fraction=0.0)
    forward_kl.fit(jax.random.key(1), flow, flow.init(jax.random.key(0)), data, **options)
    more = options | dict(num_steps=20)
    edited = data.copy()
    edited[17, 1] += 1.0
    for other, record in ((edited, r"float32\[64, 2\]"), (data[:63], r"float32\[63, 2\]"),
                          (data.astype(np.float64), r"float64\[64, 2\]")):
        with pytest.raises(ValueError, match=r"was fitted to another problem \(float32\[64, 2\] blake2b \w+; "
                                             rf"this run's: {record} blake2b \w+\)"):
            forward_kl.fit(jax.random.key(1), flow, flow.init(jax.random.key(0)), other, **more)
    _, history = forward_kl.fit(jax.random.key(1), flow, flow.init(jax.random.key(0)), data.copy(), **more)
    assert len(history["loss"]) == 20


def test_data_records_describe_any_dtype_and_scalars():
    from jaxflow.train._loop import data_record

    values = np.arange(6.0).reshape(3, 2)
    assert data_record(jnp.asarray(values, jnp.bfloat16), None, np.float32(2.0)).startswith("bfloat16[3, 2] float32[]")
    assert data_record(values) == data_record(values.T.copy().T)  # layout does not matter, values do
    assert data_record(values) != data_record(values + 1) != data_record(values.reshape(2, 3))


def test_origins_without_a_data_record_are_accepted_and_other_data_or_fits_refused(tmp_path):
    state = affine_state(2, step=3)
    run = "forward_kl.fit of affine on a standard_normal base"
    checkpoint.save(tmp_path / "legacy", checkpoint.Snapshot(state, jax.random.key(0), {}, None, run))
    assert checkpoint.restore(tmp_path / "legacy", state, origin=f"{run}, data float32[4, 2] blake2b 0a").origin == run
    checkpoint.save(tmp_path / "recorded", checkpoint.Snapshot(state, jax.random.key(0), {}, None, f"{run}, data A"))
    with pytest.raises(ValueError, match=r"was fitted to another problem \(A; this run's: B\)"):
        checkpoint.restore(tmp_path / "recorded", state, origin=f"{run}, data B")
    for other in (run, "reverse_kl.fit of affine on a standard_normal base, data A"):
        with pytest.raises(ValueError, match=r"was written by forward_kl.fit .*, data A; this run is"):
            checkpoint.restore(tmp_path / "recorded", state, origin=other)


def test_flows_with_the_same_leaves_and_names_but_other_maps_are_told_apart_by_their_draws(tmp_path):
    """Before, only names and leaves were recorded: a realnvp of another seed resumed (its loss jumped 5.7 -> 13.5)."""
    data = np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32)
    options = dict(num_steps=10, chunk_size=5, checkpoint_every=5, progress=False, validation_fraction=0.0,
                   checkpoint_dir=tmp_path)
    first = flows.realnvp(3, layers=2, hidden=(8,), seed=0)
    forward_kl.fit(jax.random.key(0), first, first.init(jax.random.key(1)), data, **options)
    other_seed = flows.realnvp(3, layers=2, hidden=(8,), seed=1)
    with pytest.raises(ValueError, match=r"was written by a flow of the same layers that draws otherwise at fixed "
                                         r"params \(other permutations, a spline's bound, ...\): forward_kl.fit of "
                                         r"stack\(chain\(affine_coupling, permutation\)\) on a standard_normal base "
                                         r"\(draws blake2b \w+\); this run's flow: .* \(draws blake2b \w+\)"):
        forward_kl.fit(jax.random.key(0), other_seed, other_seed.init(jax.random.key(1)), data, **options)
    same = flows.realnvp(3, layers=2, hidden=(8,), seed=0)  # rebuilt: the same flow resumes
    longer = options | {"num_steps": 15}
    _, history = forward_kl.fit(jax.random.key(0), same, same.init(jax.random.key(1)), data, **longer)
    assert len(history["loss"]) == 15
    # A checkpoint written before fits recorded draws is resumed by the flow of the same names.
    run = "forward_kl.fit of affine on a standard_normal base"
    state = affine_state(2, step=3)
    checkpoint.save(tmp_path / "legacy", checkpoint.Snapshot(state, jax.random.key(0), {}, None, f"{run}, data A"))
    assert checkpoint.restore(tmp_path / "legacy", state, origin=f"{run} (draws blake2b 0b), data A").origin == (
        f"{run}, data A"
    )


def test_a_state_checkpoints_cannot_save_is_refused_before_the_first_step(tmp_path):
    """optax.noisy_sgd keeps a PRNG key: the first save failed inside orbax, after a chunk of training."""
    flow = jf.Flow(jf.standard_normal(2), jf.bijectors.affine(2))
    data = np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32)
    with pytest.raises(ValueError, match=r"checkpoints cannot save the training state .*: its leaf opt_state/\S+ is "
                                         r"a PRNG key \(an optimizer that draws noise, such as optax.noisy_sgd\?\)"):
        forward_kl.fit(jax.random.key(0), flow, flow.init(jax.random.key(1)), data, optimizer=optax.noisy_sgd(1e-2),
                       num_steps=20, chunk_size=10, checkpoint_dir=tmp_path, progress=False,
                       callback=lambda state, history: pytest.fail("trained before refusing"))
    with pytest.raises(ValueError, match=r"its leaf params/w is empty \(shape \(0,\)\)"):
        checkpoint.check_saveable({"params": {"w": jnp.zeros(0)}}, "the state")


def test_leaves_in_another_order_are_refused(tmp_path):
    """Leaves are restored by position: a dict's (b, w) went into a NamedTuple's (w, b) swapped, without a word."""
    from typing import NamedTuple

    class Params(NamedTuple):
        w: jax.Array
        b: jax.Array

    saved = init_state({"w": jnp.full(2, 1.0), "b": jnp.full(2, 2.0)}, optax.sgd(1e-3))  # flattened b, w
    checkpoint.save(tmp_path, checkpoint.Snapshot(saved, jax.random.key(0), {}))
    template = init_state(Params(w=jnp.zeros(2), b=jnp.zeros(2)), optax.sgd(1e-3))
    with pytest.raises(ValueError, match=r"holds the template's leaves in another order \(checkpoint: state/params/b, "
                                         r"state/params/w, state/step; template: state/params/w, state/params/b, "
                                         r"state/step\)"):
        checkpoint.restore(tmp_path, template)


def test_reverse_kl_tells_targets_on_the_positive_half_line_apart():
    """Recorded at normal points, Gamma targets of any rate were -inf at most and shared one record."""
    from jaxflow.train.reverse_kl import _problem

    flow = jf.Flow(jf.standard_normal(3), jf.bijectors.exp(3))
    records = {
        rate: _problem(flow, lambda x, rate=rate: jnp.sum(jnp.log(x) - rate * x), "elbo", 1, lambda step: 1.0)
        for rate in (1.0, 5.0)
    }
    assert records[1.0] != records[5.0]


def test_numpy_float64_params_resume(tmp_path):
    flow = jf.Flow(jf.standard_normal(2), jf.bijectors.affine(2))
    params = {"base": (), "bijector": {"shift": np.array([0.5, -0.5]), "log_scale": np.zeros(2)}}  # float64
    fit = lambda **options: reverse_kl.fit(  # noqa: E731
        jax.random.key(3), flow, params, lambda x: -0.5 * jnp.sum((x - 1.0) ** 2), num_steps=20, chunk_size=10,
        progress=False, checkpoint_dir=tmp_path, **options,
    )
    fit(callback=lambda state, history: True)  # stops (and saves) after the first chunk
    resumed, history = fit()
    assert len(history["loss"]) == 20 and resumed["bijector"]["shift"].dtype == jnp.float32


def test_a_step_directory_jaxflow_did_not_write_is_refused_clearly(tmp_path):
    (tmp_path / "7" / "stuff").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"7 holds no jaxflow checkpoint \(no meta/\)"):
        checkpoint.restore(tmp_path, affine_state(2))
