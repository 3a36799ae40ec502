"""Training: one module per objective, all driven by optax.

    from jaxflow.train import forward_kl, reverse_kl, diagnostics
    params, history = forward_kl.fit(key, flow, params, data)              # maximum likelihood
    params, history = reverse_kl.fit(key, flow, params, log_target)        # variational inference
    params, history = distill.fit(key, student, params, teacher, teacher_params)  # a fast sampler
    diagnostics.importance_diagnostics(key, flow, params, log_target)      # k_hat, ESS, log Z

Every fit resumes from checkpoints (`checkpoint_dir=...`, see `jaxflow.checkpoint`)
and splits each batch over the devices of a mesh (`mesh=sharding.data_mesh()`,
see `sharding`).

For a loop of your own: `state = init_state(params, optimizer)` and
`step = jax.jit(make_step(loss_fn, optimizer))`.
"""

from jaxflow.train import diagnostics, distill, forward_kl, reverse_kl, sharding
from jaxflow.train._step import StepInfo, TrainState, init_state, make_step

__all__ = [
    "StepInfo", "TrainState", "diagnostics", "distill", "forward_kl", "init_state", "make_step", "reverse_kl",
    "sharding",
]
