"""Data-parallel fits on 8 (simulated CPU) devices agree with single-device fits, with the batch really split."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

import jaxflow as jf
from jaxflow.train import forward_kl, sharding

# This process has initialised JAX with one CPU device; 8 need a fresh process started with the flag.
SCRIPT = """
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxflow as jf
from jaxflow.train import distill, forward_kl, reverse_kl, sharding

mesh = sharding.data_mesh()
flow = jf.Flow(jf.standard_normal(2), jf.bijectors.affine(2))
data = (np.random.default_rng(0).normal(size=(500, 2)) * 0.5 + 1.0).astype(np.float32)
seen = []  # shardings XLA chose for each step's batch, reported at compile time


def record(x):
    jax.debug.inspect_array_sharding(x, callback=lambda s: seen.append((s, x.ndim)))


def dequantize(key, x):  # the identity, here to look at each training batch inside the step
    del key
    if x.shape[0] == 64:  # not the validation set, dequantised once before training
        record(x)
    return x


def log_target(x):
    record(x)
    return -0.5 * jnp.sum((x - 1.0) ** 2 / 0.25)


def recording_identity():  # a teacher's first step in its density pass: it sees the student's draws
    def identity(params, x, context=None):
        record(x)
        return x, jnp.zeros((), x.dtype)

    return jf.Bijector(lambda key: (), identity, identity, "recording_identity")


teacher = jf.Flow(jf.standard_normal(2), jf.chain(jf.bijectors.affine(2), recording_identity()))
teacher_params = {"base": (), "bijector": ({"shift": jnp.array([1.0, -1.0]), "log_scale": jnp.full(2, -0.7)}, ())}


def split_over_data(mesh):
    # the batch is split over the 8 devices along its leading axis, nothing replicated
    return [s.is_equivalent_to(sharding.batch_sharded(mesh), ndim) and len(s.device_set) == 8 for s, ndim in seen]


def report(params, history):
    replicated = all(leaf.sharding.is_fully_replicated and len(leaf.sharding.device_set) == len(jax.devices())
                     for leaf in jax.tree.leaves(params))
    return {"params": [np.asarray(leaf).tolist() for leaf in jax.tree.leaves(params)],
            "loss": history["loss"].tolist(), "validation_loss": history.get("validation_loss", np.zeros(0)).tolist(),
            "replicated": replicated, "batch_split": split_over_data(mesh)}


results = {"devices": jax.device_count()}
for name, mesh_or_none in (("single", None), ("mesh", mesh)):
    seen.clear()
    results["forward_" + name] = report(*forward_kl.fit(
        jax.random.key(1), flow, flow.init(jax.random.key(0)), data, batch_size=64, num_steps=30, chunk_size=15,
        dequantize=dequantize, optimizer=optax.adam(1e-2), progress=False, mesh=mesh_or_none))
    seen.clear()
    results["reverse_" + name] = report(*reverse_kl.fit(
        jax.random.key(1), flow, flow.init(jax.random.key(0)), log_target, num_samples=64, num_steps=30,
        chunk_size=15, optimizer=optax.adam(1e-2), progress=False, mesh=mesh_or_none))
    seen.clear()
    results["distill_" + name] = report(*distill.fit(
        jax.random.key(1), flow, flow.init(jax.random.key(0)), teacher, teacher_params, num_samples=64, num_steps=30,
        chunk_size=15, optimizer=optax.adam(1e-2), progress=False, mesh=mesh_or_none))
try:
    forward_kl.fit(jax.random.key(1), flow, flow.init(jax.random.key(0)), data, batch_size=60, mesh=mesh,
                   progress=False)
except ValueError as error:
    results["indivisible"] = str(error)
try:  # the default batch_size, 256, capped at 70 rows
    forward_kl.fit(jax.random.key(1), flow, flow.init(jax.random.key(0)), data[:70], validation_fraction=0.0,
                   mesh=mesh, progress=False)
except ValueError as error:
    results["capped"] = str(error)
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def eight_devices():
    flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    env = os.environ | {"XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("fit", ["forward", "reverse", "distill"])
def test_the_mesh_fit_equals_the_single_device_fit(eight_devices, fit):
    single, mesh = eight_devices[f"{fit}_single"], eight_devices[f"{fit}_mesh"]
    assert eight_devices["devices"] == 8
    for a, b in zip(mesh["params"], single["params"], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mesh["loss"], single["loss"], rtol=1e-5)
    np.testing.assert_allclose(mesh["validation_loss"], single["validation_loss"], rtol=1e-5)
    assert single["loss"][-1] < single["loss"][0] - 0.3  # the fits did fit


@pytest.mark.parametrize("fit", ["forward", "reverse", "distill"])
def test_the_batch_is_split_over_the_devices_and_the_params_replicated(eight_devices, fit):
    mesh, single = eight_devices[f"{fit}_mesh"], eight_devices[f"{fit}_single"]
    assert mesh["batch_split"] and all(mesh["batch_split"])
    assert single["batch_split"] and not any(single["batch_split"])
    assert mesh["replicated"]


def test_a_batch_that_does_not_divide_over_the_devices_is_refused(eight_devices):
    assert "batch_size (60) must be a multiple of the 8 devices" in eight_devices["indivisible"]
    assert "batch_size, capped from 256 at the training rows (70) must be a multiple of the 8 devices" in (
        eight_devices["capped"]
    )


def test_a_mesh_without_a_data_axis_is_refused():
    mesh = Mesh(np.asarray(sharding.data_mesh().devices), ("batch",))
    flow = jf.Flow(jf.standard_normal(2), jf.bijectors.affine(2))
    with pytest.raises(ValueError, match="Mesh with a 'data' axis"):
        forward_kl.fit(jax.random.key(0), flow, flow.init(jax.random.key(0)), np.ones((100, 2), np.float32),
                       mesh=mesh, progress=False)
