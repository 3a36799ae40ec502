"""Distil a MAF (cheap density, slow sampling) into an IAF (one-pass sampling) by reverse KL.

1. The data: two moons hidden in 8-D. The 2-D moons get six more coordinates of
   N(0, 0.5^2) noise, and a fixed random rotation mixes all eight.
2. The teacher: a MAF fitted to the data by maximum likelihood (forward KL). Its
   density is one pass, its sampling `dim` = 8 passes per layer.
3. The student: an IAF fitted to the teacher by minimising KL(student || teacher)
   on the student's own samples (`jaxflow.train.distill`); the teacher is never sampled.

Both are autoregressive neural spline flows (`flows.nsf_autoregressive`, the
student with `inverse=True`). With affine layers the teacher fits the data as well
but puts log-densities near -1e12 a little off the data (tiny scales, divided by
in the density pass, compound over layers), and the student's samples that land
there wreck the reverse KL; a spline is the identity outside [-bound, bound] and
keeps the teacher's density tame off the data.

Printed: the sampling time of 10k draws (median of repeats, after compilation) of
both flows, the final KL(student || teacher), the teacher's mean log-density of
student draws against that of its own draws, and both flows' log-likelihood of
held-out data. A PNG shows the moon plane (the rotation undone) for data,
teacher and student draws, and the distillation loss. About a minute on 2 cores.

    python examples/distill.py --out out/distill

References: Papamakarios et al. (2017) MAF, https://arxiv.org/abs/1705.07057;
Kingma et al. (2016) IAF, https://arxiv.org/abs/1606.04934; van den Oord et al.
(2017) Parallel WaveNet, https://arxiv.org/abs/1711.10433.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import numpy as np
import optax

from jaxflow import datasets, flows
from jaxflow.train import distill, forward_kl

DIM = 8
NOISE_SD = 0.5
MOON_NOISE = 0.1


def hidden_moons(num_samples: int, rotation: np.ndarray, seed: int) -> np.ndarray:
    """(num_samples, DIM) float32: two moons plus Gaussian noise coordinates, rotated."""
    moons = datasets.two_moons(num_samples, noise=MOON_NOISE, seed=seed)
    noise = NOISE_SD * np.random.default_rng(seed).standard_normal((num_samples, DIM - 2))
    return (np.concatenate([moons, noise], axis=1) @ rotation.T).astype(np.float32)


def median_seconds(fn, *args, repeats: int = 5) -> float:
    """Median wall time of `fn(*args)` (already compiled), waiting for the device each time."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def plot(path: Path, planes: dict, history: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(planes) + 1, figsize=(4 * (len(planes) + 1), 3.8))
    for ax, (title, points) in zip(axes, planes.items()):
        ax.scatter(*points[:3000].T, s=1, alpha=0.4)
        ax.set(title=title, xlim=(-3, 3), ylim=(-3, 3), xlabel="moon plane 1", ylabel="moon plane 2")
    axes[-1].plot(history["loss"], lw=0.5)
    axes[-1].set(title="distillation", xlabel="step", ylabel="KL(student || teacher)", yscale="log")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("out/distill"))
    parser.add_argument("--teacher-steps", type=int, default=3000)
    parser.add_argument("--student-steps", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    keys = dict(zip(["rotation", "teacher", "teacher_fit", "student", "fit", "check", "draws"],
                    jax.random.split(jax.random.key(args.seed), 7)))
    rotation = np.asarray(jax.random.orthogonal(keys["rotation"], DIM))
    train = hidden_moons(10_000, rotation, seed=2 * args.seed)
    test = hidden_moons(5_000, rotation, seed=2 * args.seed + 1)

    teacher = flows.nsf_autoregressive(DIM, layers=4, hidden=(64, 64))
    student = flows.nsf_autoregressive(DIM, layers=4, hidden=(64, 64), inverse=True)
    start = time.perf_counter()
    teacher_params, _ = forward_kl.fit(
        keys["teacher_fit"], teacher, teacher.init(keys["teacher"]), train, num_steps=args.teacher_steps,
        optimizer=optax.adam(optax.cosine_decay_schedule(2e-3, args.teacher_steps, alpha=0.05)),
        validation_fraction=0.0, progress=False,
    )
    teacher_seconds = time.perf_counter() - start
    start = time.perf_counter()
    student_params, history = distill.fit(
        keys["fit"], student, student.init(keys["student"]), teacher, teacher_params, num_samples=256,
        num_steps=args.student_steps, progress=False,
        optimizer=optax.adam(optax.cosine_decay_schedule(3e-3, args.student_steps, alpha=0.05)),
    )
    student_seconds = time.perf_counter() - start

    sample = jax.jit(lambda flow, params, key: flow.sample(params, key, (10_000,)), static_argnums=0)
    teacher_time = median_seconds(sample, teacher, teacher_params, keys["draws"])
    student_time = median_seconds(sample, student, student_params, keys["draws"])

    @jax.jit
    def checks(key):
        kl_key, student_key, teacher_key = jax.random.split(key, 3)
        kl_terms = jax.vmap(lambda k: distill.loss(student_params, student, teacher, teacher_params, k, 1000))(
            jax.random.split(kl_key, 20))
        log_teacher = lambda x: teacher.log_prob(teacher_params, x).mean()  # noqa: E731
        return dict(
            kl=kl_terms.mean(), kl_se=kl_terms.std() / np.sqrt(20),
            teacher_on_student_draws=log_teacher(student.sample(student_params, student_key, (20_000,))),
            teacher_on_teacher_draws=log_teacher(teacher.sample(teacher_params, teacher_key, (20_000,))),
            teacher_test=teacher.log_prob(teacher_params, test).mean(),
            student_test=student.log_prob(student_params, test).mean(),
        )

    result = {name: float(value) for name, value in checks(keys["check"]).items()}
    print(f"teacher MAF: fitted in {teacher_seconds:.0f} s; student IAF: distilled in {student_seconds:.0f} s")
    print(f"sampling 10k draws: teacher {1e3 * teacher_time:.1f} ms, student {1e3 * student_time:.1f} ms "
          f"(median of 5): {teacher_time / student_time:.1f}x faster")
    print(f"KL(student || teacher) = {result['kl']:.4f} +- {result['kl_se']:.4f} nats")
    print(f"teacher log-density, mean over 20k draws: of student draws {result['teacher_on_student_draws']:.3f}, "
          f"of its own draws {result['teacher_on_teacher_draws']:.3f}")
    print(f"held-out log-likelihood (nats per point): teacher {result['teacher_test']:.3f}, "
          f"student {result['student_test']:.3f}")

    unrotate = lambda x: (np.asarray(x) @ rotation)[:, :2]  # noqa: E731
    planes = {
        "data": unrotate(test),
        "teacher (MAF) draws": unrotate(sample(teacher, teacher_params, keys["draws"])),
        "student (IAF) draws": unrotate(sample(student, student_params, keys["draws"])),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    plot(args.out / "distill.png", planes, history)
    print(f"wrote {args.out / 'distill.png'}")


if __name__ == "__main__":
    main()
