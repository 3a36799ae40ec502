"""Distillation: fit a student flow to a trained teacher flow by reverse KL, KL(student || teacher).

The usual pairing is a teacher whose density is cheap and whose sampling is slow
(a MAF, fitted to data by forward KL) and a student built the other way round (an
IAF: one pass to sample). The loss needs only what each does cheaply: samples of
the student with their log-density (its forward pass) and the teacher's density
at them (its inverse pass); the teacher is never sampled.

    teacher_key, student_key, fit_key, distill_key = jax.random.split(key, 4)
    teacher_params, _ = forward_kl.fit(fit_key, teacher, teacher.init(teacher_key), data)
    params, history = distill.fit(distill_key, student, student.init(student_key), teacher, teacher_params)

Both flows are normalised, so the loss is an unbiased estimate of the KL itself
(>= 0, 0 when the student equals the teacher). Conditional flows are distilled
over a set of contexts: each step draws one context per sample from `contexts`.

References: van den Oord et al. (2017) Parallel WaveNet (probability density
distillation), https://arxiv.org/abs/1711.10433; Kingma et al. (2016) IAF,
https://arxiv.org/abs/1606.04934; Roeder et al. (2017) sticking the landing,
https://arxiv.org/abs/1703.09194.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxflow.bijectors._checks import check_finite_rows
from jaxflow.train import _loop, sharding
from jaxflow.train._step import init_state, make_step, with_clipping


def loss(
    student_params, student, teacher, teacher_params, key, num_samples: int, context=None, *,
    stick_the_landing: bool = False, mesh=None,
) -> jax.Array:
    """KL(student || teacher) estimated on `num_samples` student draws: mean(log q_s(x) - log q_t(x)).

    Args:
      student_params: the student's params (the ones differentiated).
      student: a `jaxflow.Flow`, sampled with its forward pass.
      teacher: a `jaxflow.Flow` over the same events, evaluated with its inverse pass.
      teacher_params: the teacher's params (held fixed: no gradient flows into them).
      key: PRNG key for the draws (and for flows with stochastic log-dets).
      num_samples: Monte Carlo draws.
      context: for conditional flows, (num_samples, *context_shape), one context per draw.
      stick_the_landing: evaluate log q_s with gradient-stopped params (one more
        inverse pass of the student: cheap for couplings, `dim` passes for an IAF),
        which removes the score term: the gradient has zero variance once the
        student equals the teacher.
      mesh: split the draws over the "data" axis of this mesh (`jaxflow.train.sharding`).

    Returns:
      A scalar, the estimate of KL(student || teacher) in nats.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples}.")
    sharding.check_batch(mesh, num_samples, "num_samples")
    sample_key, teacher_key, student_key = jax.random.split(key, 3)
    context = sharding.constrain_batch(context, mesh)
    x, log_q = sharding.constrain_batch(
        student.sample_and_log_prob(student_params, sample_key, (num_samples,), context), mesh
    )
    if stick_the_landing:
        log_q = student.log_prob(jax.lax.stop_gradient(student_params), x, context, key=student_key)
    log_p = teacher.log_prob(jax.lax.stop_gradient(teacher_params), x, context, key=teacher_key)
    return jnp.mean(log_q - log_p)


def fit(
    key,
    student,
    student_params,
    teacher,
    teacher_params,
    *,
    contexts=None,
    num_samples: int = 256,
    optimizer=None,
    num_steps: int = 2000,
    stick_the_landing: bool = False,
    clip_norm: float | None = None,
    chunk_size: int = 100,
    progress: bool = True,
    on_nonfinite: str = "skip",
    callback=None,
    checkpoint_dir=None,
    checkpoint_every: int = 1000,
    mesh=None,
):
    """Fits `student` to `teacher` by minimising KL(student || teacher).

    Args:
      key: PRNG key (step t uses fold_in(key, t)).
      student: a `jaxflow.Flow` whose forward pass (sampling) is cheap, e.g. an IAF.
      student_params: its starting params.
      teacher: a trained `jaxflow.Flow` on the same event shape whose inverse pass
        (density) is cheap, e.g. a MAF.
      teacher_params: its params, held fixed.
      contexts: for conditional flows, (num_contexts, *context_shape): each step
        draws `num_samples` rows from it at random, one per sample.
      num_samples: draws per step.
      optimizer: an optax optimizer (default `optax.adam(1e-3)`).
      num_steps: optimisation steps.
      stick_the_landing: the STL gradient (see `loss`).
      clip_norm: clip gradients to this global norm before the optimizer.
      chunk_size: steps per `lax.scan` chunk (one host round trip each).
      progress: show a progress bar.
      on_nonfinite: "skip" steps whose loss or gradient is not finite (a RuntimeWarning
        when more than 1% were), or "raise".
      callback: `(state, history) -> bool | None` called after every chunk; True stops.
      checkpoint_dir: a directory for checkpoints (`jaxflow.checkpoint`). If it
        holds one of a run of this student started with this key, distilling
        this teacher (its layer names and a hash of its params) over these
        contexts, training resumes from the newest.
      checkpoint_every: steps between checkpoints, rounded up to whole chunks;
        one is also written when training stops.
      mesh: a `jax.sharding.Mesh` with a "data" axis: each step's draws are split
        over its devices (`num_samples` must be a multiple of their number).

    Returns:
      `(params, history)`: the student's params, and numpy arrays "loss" (the
      KL estimate per step), "grad_norm", "skipped" and "num_skipped".

    Raises:
      ValueError: if the flows' event or context shapes differ, or `contexts` is
        missing for conditional flows (or given for unconditional ones).
    """
    contexts = _checked_contexts(student, teacher, contexts)
    optimizer = with_clipping(optimizer, clip_norm)
    teacher_params, contexts = sharding.replicate((teacher_params, contexts), mesh)

    @functools.partial(jax.jit, static_argnums=4)
    def run_chunk(state, key, teacher_params, contexts, length):
        def loss_fn(params, key):
            context_key, sample_key = jax.random.split(key)
            context = _draw_rows(context_key, contexts, num_samples)
            return loss(params, student, teacher, teacher_params, sample_key, num_samples, context,
                        stick_the_landing=stick_the_landing, mesh=mesh)

        keys = _loop.step_keys(key, state.step + jnp.arange(length))
        return sharding.constrain_replicated(_loop.scan_steps(make_step(loss_fn, optimizer), state, (keys,)), mesh)

    state, history = _loop.run_resumable(
        lambda state, length: run_chunk(state, key, teacher_params, contexts, length),
        init_state(student_params, optimizer),
        num_steps,
        key=key,
        origin=_loop.origin_of(
            "distill.fit", student, None if checkpoint_dir is None else _problem(teacher, teacher_params, contexts)
        ),
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=checkpoint_every,
        mesh=mesh,
        chunk_size=chunk_size,
        progress=progress,
        on_nonfinite=on_nonfinite,
        callbacks=(callback,),
        description="distill",
    )
    return state.params, history


def _problem(teacher, teacher_params, contexts) -> str:
    """What the checkpoints record of the problem: the teacher (layer names, a hash of its params), the contexts."""
    record = f"teacher {teacher.bijector.name} params blake2b {_loop.digest(*jax.tree.leaves(teacher_params))}"
    return record if contexts is None else f"{record}, contexts {_loop.data_record(contexts)}"


def _draw_rows(key, contexts, num_samples):
    """`num_samples` rows of `contexts` drawn uniformly with replacement (None stays None)."""
    if contexts is None:
        return None
    return contexts[jax.random.randint(key, (num_samples,), 0, contexts.shape[0])]


def _checked_contexts(student, teacher, contexts):
    """`contexts` as an array after checking that both flows agree on events and contexts."""
    if student.event_shape != teacher.event_shape:
        raise ValueError(
            f"student and teacher must model the same events: event shapes {student.event_shape} and "
            f"{teacher.event_shape}."
        )
    if student.context_shape != teacher.context_shape:
        raise ValueError(
            f"student and teacher must take the same context: context shapes {student.context_shape} and "
            f"{teacher.context_shape}."
        )
    if student.context_shape is None:
        if contexts is not None:
            raise ValueError(f"the flows are unconditional but got contexts of shape {jnp.shape(contexts)}.")
        return None
    expected = ("num_contexts", *student.context_shape)
    if contexts is None:
        raise ValueError(f"the flows are conditional: pass contexts=... of shape {expected} to distil over.")
    contexts = jnp.asarray(contexts)
    if contexts.ndim != 1 + len(student.context_shape) or tuple(contexts.shape[1:]) != student.context_shape:
        raise ValueError(f"contexts should have shape {expected}, got {tuple(contexts.shape)}.")
    if contexts.shape[0] == 0 or not jnp.issubdtype(contexts.dtype, jnp.floating):
        raise ValueError(f"contexts must be a non-empty float array, got {contexts.dtype}{tuple(contexts.shape)}.")
    check_finite_rows(contexts, "contexts")
    return contexts
