"""Data-parallel training over a `jax.sharding.Mesh`: each batch split over a "data" axis, params replicated.

    mesh = sharding.data_mesh()                                     # every device on one "data" axis
    params, history = forward_kl.fit(key, flow, params, data, mesh=mesh)
    params, history = reverse_kl.fit(key, flow, params, log_target, mesh=mesh)
    params, history = distill.fit(key, student, params, teacher, teacher_params, mesh=mesh)

With a mesh, a fit places the params, the optimizer state and the data set on
every device (replicated) and constrains each step's batch to be split along
its leading axis over the mesh's "data" axis: the rows gathered for a
forward-KL step, the draws from the flow for a reverse-KL step, the student's
draws for a distillation step. XLA then runs each device on its slice of the
batch and all-reduces the gradients. Batch order and keys are those of the
single-device run, so the result is the same up to the order of floating-point
sums. `batch_size` (forward KL) and the number of draws per step (reverse KL
and distillation; groups of draws for IWAE) must be multiples of the number of
devices on "data". Everything is replicated over any other mesh axis.

The data set itself is replicated: every device holds all of it. For data that
does not fit on one device, or for several hosts feeding their own data, write
the loop (`jaxflow.train.make_step`) and build each global batch from the
processes' shards. On several hosts, in every process:

    jax.distributed.initialize()            # first, before any other JAX call
    mesh = sharding.data_mesh()             # all devices of all processes
    state = sharding.replicate(init_state(params, optimizer), mesh)
    step = jax.jit(make_step(loss_fn, optimizer), out_shardings=sharding.replicated(mesh))
    for local_batch in my_batches(jax.process_index(), jax.process_count()):
        batch = sharding.global_batch(local_batch, mesh)   # this process's rows of the global batch
        state, info = step(state, batch)

`global_batch` calls `jax.make_array_from_process_local_data`: the global batch
is the processes' local batches concatenated in process order, each process
holding (batch size / process count) rows.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def data_mesh(devices=None) -> Mesh:
    """A one-axis mesh named "data" over `devices` (default: `jax.devices()`, all processes' devices)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """The sharding of an array held whole on every device of `mesh`."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """The sharding of an array split along its leading (batch) axis over the "data" axis of `mesh`."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicate(tree, mesh: Mesh | None):
    """`tree` placed whole on every device of `mesh` (unchanged if `mesh` is None)."""
    return tree if mesh is None else jax.device_put(tree, replicated(mesh))


def constrain_batch(tree, mesh: Mesh | None):
    """Inside jit: every leaf of `tree` split along its leading axis over "data" (unchanged if `mesh` is None)."""
    return tree if mesh is None else jax.lax.with_sharding_constraint(tree, batch_sharded(mesh))


def constrain_replicated(tree, mesh: Mesh | None):
    """Inside jit: every leaf of `tree` whole on every device (unchanged if `mesh` is None)."""
    return tree if mesh is None else jax.lax.with_sharding_constraint(tree, replicated(mesh))


def global_batch(local_batch, mesh: Mesh):
    """The global batch (a pytree of arrays split over "data") from this process's rows of it."""
    return jax.tree.map(lambda rows: jax.make_array_from_process_local_data(batch_sharded(mesh), rows), local_batch)


def check_batch(mesh: Mesh | None, size: int, what: str) -> None:
    """Raises ValueError unless `mesh` has a "data" axis whose number of devices divides `size`."""
    if mesh is None:
        return
    if not isinstance(mesh, Mesh) or DATA_AXIS not in mesh.axis_names:
        raise ValueError(
            f"mesh must be a jax.sharding.Mesh with a {DATA_AXIS!r} axis (e.g. sharding.data_mesh()), got {mesh!r}."
        )
    num_devices = mesh.shape[DATA_AXIS]
    if size % num_devices:
        raise ValueError(
            f"{what} ({size}) must be a multiple of the {num_devices} devices on the mesh's {DATA_AXIS!r} axis."
        )
