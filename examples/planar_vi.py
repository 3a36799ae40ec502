"""Variational inference with planar and Sylvester flows on the banana of Haario et al. (1999).

    x1 ~ N(0, 10^2),   x2 | x1 ~ N(b (x1^2 - 100), 1)        (`jaxflow.targets.banana(b)`)

This is the use these flows were made for: a posterior approximation q fitted to an
unnormalised density by maximising the ELBO (`jaxflow.train.reverse_kl.fit`), with
samples and their densities from one forward pass. Both flows start from N(0, I), so
the target is fitted in coordinates z = x / SCALE (a fixed diagonal change of
variables whose log-Jacobian is added to the target: the ELBO is unchanged by it);
the target is tempered at first (p^beta, beta rising from 0.01 to 1) so that q
reaches into both arms. The banana is normalised, so log Z = 0 and -ELBO is KL(q || p).

Printed per flow: ELBO, normalised importance ESS and Pareto k-hat
(`jaxflow.train.diagnostics`). Written: one PNG of target contours with flow samples.

    python examples/planar_vi.py --out out/planar_vi

References: Rezende & Mohamed (2015), https://arxiv.org/abs/1505.05770;
van den Berg et al. (2018), https://arxiv.org/abs/1803.05649;
Haario, Saksman & Tamminen (1999), Computational Statistics 14.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import numpy as np
import optax

from jaxflow import targets
from jaxflow.flows import planar_flow, sylvester_flow
from jaxflow.train import diagnostics, reverse_kl

SCALE = np.array([10.0, 10.0], np.float32)  # roughly the target's standard deviations
FLOWS = {
    "planar (32 layers)": lambda: planar_flow(2, layers=32),
    "Sylvester (16 layers)": lambda: sylvester_flow(2, layers=16, variant="orthogonal"),
}


def standardized(log_density):
    """log p~(SCALE z) + sum(log SCALE): the target in coordinates z = x / SCALE, one point z of shape (2,)."""
    log_jacobian = float(np.sum(np.log(SCALE)))
    return lambda z: log_density(SCALE * z) + log_jacobian


def fit_flow(make_flow, log_target, key, args):
    """Fits one flow by reverse KL; returns its importance diagnostics and (3000, 2) draws in x coordinates."""
    init_key, fit_key, diag_key, draw_key = jax.random.split(key, 4)
    flow = make_flow()
    optimizer = optax.adam(optax.cosine_decay_schedule(args.learning_rate, args.steps, alpha=0.05))
    params, _ = reverse_kl.fit(
        fit_key, flow, flow.init(init_key), log_target, num_samples=args.num_samples, num_steps=args.steps,
        optimizer=optimizer, stick_the_landing=True, anneal_steps=args.steps // 2, clip_norm=100.0,
        chunk_size=min(100, args.steps), progress=False,
    )
    diagnose = jax.jit(lambda key, params: diagnostics.importance_diagnostics(key, flow, params, log_target, 10_000))
    diag = diagnose(diag_key, params)
    draws = jax.jit(flow.sample, static_argnums=2)(params, draw_key, (3000,))
    return diag, np.asarray(draws) * SCALE


def plot(path: Path, log_density, panels: list[dict]) -> None:
    """One panel per flow: contours of the target log-density with the flow's draws on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x1 = np.linspace(-30, 30, 400, dtype=np.float32)
    x2 = np.linspace(-15, 60, 400, dtype=np.float32)
    grid = np.stack(np.meshgrid(x1, x2), axis=-1).reshape(-1, 2)
    log_p = np.asarray(jax.jit(jax.vmap(log_density))(grid)).reshape(len(x2), len(x1))
    levels = log_p.max() - 0.5 * np.array([16.0, 9.0, 4.0, 1.0])  # where a Gaussian is 4, 3, 2, 1 sd from its mode
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.5), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        ax.contour(x1, x2, log_p, levels=levels, colors="grey", linestyles="solid", linewidths=0.6)
        ax.scatter(*panel["draws"].T, s=1, alpha=0.5, c="tab:orange", zorder=3)
        ax.set(xlabel="x1", ylabel="x2", xlim=(x1[0], x1[-1]), ylim=(x2[0], x2[-1]))
        ax.set_title(f"{panel['name']}\nELBO {panel['elbo']:.3f}, ESS {panel['ess']:.2f}, k-hat {panel['k_hat']:.2f}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict[str, dict[str, float]]:
    """Runs the example; returns {flow name: {"elbo", "ess", "k_hat"}}."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--out", type=Path, default=Path("out/planar_vi"))
    parser.add_argument("--twist", type=float, default=0.1, help="b of the banana")
    parser.add_argument("--num-samples", type=int, default=256, help="draws per step")
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    target = targets.banana(args.twist)
    log_target = standardized(target.log_density)
    panels, metrics = [], {}
    for index, (name, make_flow) in enumerate(FLOWS.items()):
        start = time.perf_counter()
        diag, draws = fit_flow(make_flow, log_target, jax.random.key(args.seed + index), args)
        metrics[name] = {"elbo": float(diag.elbo), "ess": float(diag.ess), "k_hat": float(diag.k_hat)}
        panels.append({"name": name, "draws": draws, **metrics[name]})
        print(f"{name:22s} ELBO {metrics[name]['elbo']:8.4f} (log Z = 0)   ESS {metrics[name]['ess']:.3f}   "
              f"k-hat {metrics[name]['k_hat']:.3f}   ({time.perf_counter() - start:.1f} s)", flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    plot(args.out / "planar_vi.png", target.log_density, panels)
    print(f"wrote {args.out / 'planar_vi.png'}")
    return metrics


if __name__ == "__main__":
    main()
