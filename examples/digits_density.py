"""Density estimation on sklearn's 8x8 digits: a masked autoregressive flow and a neural spline flow.

The digits (integers 0..16, 64 pixels) are uniformly dequantised and logit-transformed as
in RealNVP (`jaxflow.datasets.dequantize_logit`, several noise draws of the training
images). Each flow is fitted by maximum likelihood (`jaxflow.train.forward_kl.fit`, Adam
with a cosine-decayed learning rate), keeping the params with the best loss on
validation images held out of the training set and stopping when it has not improved
for --patience evaluations (one every 50 steps). The models are those of
`benchmarks/digits.py`: MAF with 5 affine MADE layers, NSF with 8 rational-quadratic
spline couplings (8 bins on [-4, 4]), networks 2x128. With about 1150 training images
both overfit early (the validation loss is lowest after about 100-200 steps for NSF
and 200-400 for MAF), and in a short search neither 2x64 networks, weight decay, ten
MAF layers nor 16 noise draws improved the test bits/dim by more than 0.03.

Printed per model: the mean test log-likelihood in nats per image (of the logit-space
data the flow models, as in `benchmarks/digits.py`), the same in bits/dim of the
dequantised integer digits (the uniform-dequantisation bound), and the training wall
time (compilation included). Written: one PNG, test digits next to samples of each flow.

    python examples/digits_density.py --out out/digits_density

References: Papamakarios et al. (2017) MAF, https://arxiv.org/abs/1705.07057;
Durkan et al. (2019) Neural Spline Flows, https://arxiv.org/abs/1906.04032;
Dinh et al. (2016) RealNVP (dequantisation and logit transform), https://arxiv.org/abs/1605.08803.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import numpy as np
import optax

from jaxflow import datasets
from jaxflow.dequantization import bits_per_dim
from jaxflow.flows import maf, nsf_coupling
from jaxflow.train import forward_kl

SIDE = 8
NUM_DIMS = SIDE * SIDE
VALIDATE_EVERY = 50  # steps
COLUMNS = 6  # digits per row of each panel
MODELS = {
    "MAF": (maf, {"layers": 5, "hidden": (128, 128)}),
    "NSF": (nsf_coupling, {"layers": 8, "hidden": (128, 128), "bins": 8, "bound": 4.0}),
}


def split_digits(args) -> dict[str, np.ndarray]:
    """Training, validation and test sets: logit-space draws, and the integer test digits for the figure.

    The train/test split is sklearn's digits shuffled with seed 0 (that of `benchmarks/digits.py`);
    the validation images are the last `args.validation` of the training images. Training images
    get `args.noise_copies` noise draws, validation and test images one each.
    """
    train_int, test_int, _, _ = datasets.digits()
    num_train = len(train_int) - round(args.validation * len(train_int))
    valid_seed = args.seed + args.noise_copies  # the next seed after the training draws'
    train, _ = datasets.dequantize_logit(train_int[:num_train], seed=args.seed, num_draws=args.noise_copies)
    valid, _ = datasets.dequantize_logit(train_int[num_train:], seed=valid_seed)
    test, test_log_det = datasets.dequantize_logit(test_int, seed=valid_seed + 1)
    return {"train": train, "valid": valid, "test": test, "test_log_det": test_log_det, "test_int": test_int}


def fit_flow(name: str, data: dict, args):
    """Builds flow `name` and fits it to data["train"]; returns (flow, params, wall seconds of the fit)."""
    builder, config = MODELS[name]
    flow = builder(NUM_DIMS, **config)
    optimizer = optax.adam(optax.cosine_decay_schedule(args.learning_rate, args.steps))
    start = time.perf_counter()
    params, _ = forward_kl.fit(
        jax.random.key(args.seed + 1), flow, flow.init(jax.random.key(args.seed)), data["train"],
        validation_data=data["valid"], optimizer=optimizer, batch_size=args.batch_size, num_steps=args.steps,
        chunk_size=min(VALIDATE_EVERY, args.steps), patience=args.patience, progress=False,
    )
    return flow, params, time.perf_counter() - start


def test_metrics(flow, params, data: dict) -> dict[str, float]:
    """Mean test log-likelihood in logit space (nats per image) and the dequantised bits/dim."""
    log_q = np.asarray(jax.jit(flow.log_prob)(params, data["test"]))
    log_likelihood = datasets.integer_log_likelihood(log_q, data["test_log_det"], NUM_DIMS)
    return {"test_log_lik": float(log_q.mean()), "bits_per_dim": float(np.mean(bits_per_dim(log_likelihood, NUM_DIMS)))}


def mosaic(images: np.ndarray, columns: int) -> np.ndarray:
    """(n, 8, 8) images, n a multiple of `columns`, tiled row by row with NaN one-pixel gaps."""
    padded = np.pad(images.astype(float), ((0, 0), (0, 1), (0, 1)), constant_values=np.nan)
    rows = len(images) // columns
    tiled = padded.reshape(rows, columns, SIDE + 1, SIDE + 1).transpose(0, 2, 1, 3)
    return tiled.reshape(rows * (SIDE + 1), columns * (SIDE + 1))[:-1, :-1]


def plot(path: Path, panels: list[tuple[str, np.ndarray]]) -> None:
    """Side by side, one mosaic of (n, 8, 8) pixel intensities per (title, images) panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cmap = plt.get_cmap("gray_r").with_extremes(bad="lightsteelblue")
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4), squeeze=False)
    for ax, (title, images) in zip(axes[0], panels):
        ax.imshow(mosaic(images, COLUMNS), cmap=cmap, vmin=0, vmax=datasets.DIGIT_LEVELS - 1)
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict[str, dict[str, float]]:
    """Runs the example; returns per model its test log-likelihood, bits/dim and training seconds."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated names from MODELS")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=Path("out/digits_density"))
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--patience", type=int, default=5,
                        help=f"validations (one every {VALIDATE_EVERY} steps) without progress before stopping")
    parser.add_argument("--noise-copies", type=int, default=8, help="dequantisation draws of the training images")
    parser.add_argument("--validation", type=float, default=0.1, help="share of training images held out")
    parser.add_argument("--num-samples", type=int, default=30, help=f"digits per panel, a multiple of {COLUMNS}")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    names = args.models.split(",")
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        parser.error(f"unknown models {unknown}; expected names from {list(MODELS)}")
    if args.num_samples < COLUMNS or args.num_samples % COLUMNS:
        parser.error(f"--num-samples must be a positive multiple of {COLUMNS}, got {args.num_samples}")

    data = split_digits(args)
    panels = [("test digits", data["test_int"][: args.num_samples].reshape(-1, SIDE, SIDE))]
    metrics = {}
    for name in names:
        flow, params, seconds = fit_flow(name, data, args)
        metrics[name] = {**test_metrics(flow, params, data), "train_seconds": seconds}
        sample = jax.jit(flow.sample, static_argnums=2)
        samples = np.asarray(sample(params, jax.random.key(args.seed + 2), (args.num_samples,)))
        panels.append((f"{name} samples\n{metrics[name]['bits_per_dim']:.2f} bits/dim",
                       datasets.undo_logit(samples).reshape(-1, SIDE, SIDE)))
        print(f"{name:4s} test log-likelihood {metrics[name]['test_log_lik']:8.2f} nats (logit space)   "
              f"{metrics[name]['bits_per_dim']:.3f} bits/dim   training {seconds:.1f} s", flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    plot(args.out / "digits_density.png", panels)
    print(f"wrote {args.out / 'digits_density.png'}")
    return metrics


if __name__ == "__main__":
    main()
