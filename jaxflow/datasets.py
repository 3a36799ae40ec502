"""Small datasets for examples, tests and benchmarks (two moons, digits), from scikit-learn.

scikit-learn is an optional dependency (extras `test` and `bench`); it ships the digits
data, so nothing is downloaded.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from jaxflow.bijectors._checks import is_positive_int

DIGIT_LEVELS = 17  # sklearn's digits take the integer values 0..16
LOGIT_ALPHA = 0.05  # RealNVP's boundary margin for the logit transform


def _sklearn_datasets():
    try:
        import sklearn.datasets
    except ImportError as error:  # pragma: no cover - exercised only without the extra
        raise ImportError("jaxflow.datasets needs scikit-learn: pip install 'jaxflow[test]'") from error
    return sklearn.datasets


def two_moons(num_samples: int, *, noise: float = 0.05, seed: int = 0) -> np.ndarray:
    """(num_samples, 2) float32 points on two interleaved half circles, standardised."""
    if not is_positive_int(num_samples) or num_samples < 2:
        raise ValueError(f"two_moons: num_samples must be an int >= 2 (to standardise), got {num_samples!r}.")
    x, _ = _sklearn_datasets().make_moons(num_samples, noise=noise, random_state=seed)
    return ((x - x.mean(0)) / x.std(0)).astype(np.float32)


def digits(*, test_fraction: float = 0.2, seed: int = 0):
    """sklearn's 8x8 digits as integers 0..16: (train, test, train_labels, test_labels).

    Images are flattened to 64 values; use `dequantize_logit` to make them continuous.
    `test_fraction`, in (0, 1), is the share of the images held out for testing,
    rounded to a whole number of images and at least one on either side of the split.
    """
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, numbers.Real) or not 0 < test_fraction < 1:
        raise ValueError(f"digits: test_fraction must be a number in (0, 1), got {test_fraction!r}.")
    bunch = _sklearn_datasets().load_digits()
    order = np.random.default_rng(seed).permutation(len(bunch.data))
    data, labels = bunch.data[order].astype(np.int32), bunch.target[order]
    num_test = min(max(round(test_fraction * len(data)), 1), len(data) - 1)
    return data[num_test:], data[:num_test], labels[num_test:], labels[:num_test]


def dequantize_logit(x_int: np.ndarray, *, seed: int = 0, num_draws: int = 1, levels: int = DIGIT_LEVELS):
    """Uniform dequantisation then RealNVP's logit transform, `num_draws` noise draws of each row.

    Each integer x becomes u = (x + noise) / levels in [0, 1) with noise ~ U[0, 1), then
    y = logit(alpha + (1 - 2 alpha) u) with alpha = LOGIT_ALPHA, which keeps y finite.

    Args:
      x_int: integers in [0, levels), shape (n, D).
      seed: draw k takes its noise from `np.random.default_rng(seed + k)`: calls whose seed
        ranges seed, ..., seed + num_draws - 1 do not overlap draw independent noise.
      num_draws: noise draws of each row, stacked along the first axis.
      levels: L, the number of values each integer takes.

    Returns:
      (y, log_det): y, float32 of shape (num_draws * n, D), draw k in rows k n to (k + 1) n;
      log_det, float64 of shape (num_draws * n,), log |det dy/du| of each row, so that
      log p(u) = log p(y) + log_det. `integer_log_likelihood` turns log p(y) into the
      dequantised log-likelihood of the integers.

    References: Dinh et al. (2016), RealNVP, https://arxiv.org/abs/1605.08803
    """
    x_int = _check_integer_rows("dequantize_logit", x_int, levels)
    _check_positive_int("dequantize_logit", "num_draws", num_draws)
    noise = np.concatenate([np.random.default_rng(seed + draw).uniform(size=x_int.shape) for draw in range(num_draws)])
    u = (np.tile(x_int, (num_draws, 1)) + noise) / levels
    p = LOGIT_ALPHA + (1 - 2 * LOGIT_ALPHA) * u
    y = np.log(p) - np.log1p(-p)
    log_det = np.sum(np.log(1 - 2 * LOGIT_ALPHA) - np.log(p) - np.log1p(-p), axis=-1)
    return y.astype(np.float32), log_det


def integer_log_likelihood(logit_log_prob, log_det, num_dims: int, *, levels: int = DIGIT_LEVELS) -> np.ndarray:
    """Log-density of the dequantised integers x + noise, from that of their logit-space values y.

    With v = x + noise = levels * u in [0, levels)^D and y from `dequantize_logit`, the change
    of variables gives log p(v) = log p(y) + log |det dy/du| - D log levels. Its mean over
    noise draws is the uniform-dequantisation lower bound on log P(x) (`jaxflow.dequantization`).

    Args:
      logit_log_prob: log p(y) of rows of `dequantize_logit`'s y, shape (n,).
      log_det: their log_det from `dequantize_logit`, shape (n,).
      num_dims: D, the number of integers per row.
      levels: L, as given to `dequantize_logit`.

    Returns:
      float64 array of shape (n,): log p(v) in nats.
    """
    _check_positive_int("integer_log_likelihood", "num_dims", num_dims)
    _check_positive_int("integer_log_likelihood", "levels", levels)
    logit_log_prob, log_det = np.asarray(logit_log_prob, np.float64), np.asarray(log_det, np.float64)
    if logit_log_prob.shape != log_det.shape:
        raise ValueError(
            "integer_log_likelihood: logit_log_prob and log_det must have the same shape (one value per row), "
            f"got {logit_log_prob.shape} and {log_det.shape}."
        )
    return logit_log_prob + log_det - num_dims * math.log(levels)


def undo_logit(y: np.ndarray, *, levels: int = DIGIT_LEVELS) -> np.ndarray:
    """Maps logit-space values back to pixel intensities in [0, levels - 1]."""
    y = np.asarray(y, np.float64)
    decay = np.exp(-np.abs(y))  # in (0, 1]: the sigmoid without overflow for logits of either sign
    p = np.where(y >= 0, 1 / (1 + decay), decay / (1 + decay))
    u = (p - LOGIT_ALPHA) / (1 - 2 * LOGIT_ALPHA)
    return np.clip(u * levels, 0, levels - 1)


def _check_positive_int(function: str, name: str, value) -> None:
    if not is_positive_int(value):
        raise ValueError(f"{function}: {name} must be a positive int, got {value!r}.")


def _check_integer_rows(function: str, x_int, levels) -> np.ndarray:
    """x_int as an array, after checking that it holds (n, D) integers in [0, levels)."""
    _check_positive_int(function, "levels", levels)
    x_int = np.asarray(x_int)
    if not np.issubdtype(x_int.dtype, np.integer):
        raise TypeError(f"{function}: expected integers in [0, {levels}), got dtype {x_int.dtype}.")
    if x_int.ndim != 2:
        raise ValueError(f"{function}: expected integers of shape (num_rows, num_dims), got shape {x_int.shape}.")
    if x_int.size and (x_int.min() < 0 or x_int.max() >= levels):
        low, high = x_int.min(), x_int.max()
        raise ValueError(f"{function}: expected integers in [0, {levels}), got values in [{low}, {high}].")
    return x_int
