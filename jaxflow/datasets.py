"""Small datasets for examples, tests and benchmarks (two moons, digits), from scikit-learn.

scikit-learn is an optional dependency (extras `test` and `bench`); it ships the digits
data, so nothing is downloaded.
"""

from __future__ import annotations

import numpy as np

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
    x, _ = _sklearn_datasets().make_moons(num_samples, noise=noise, random_state=seed)
    return ((x - x.mean(0)) / x.std(0)).astype(np.float32)


def digits(*, test_fraction: float = 0.2, seed: int = 0):
    """sklearn's 8x8 digits as integers 0..16: (train, test, train_labels, test_labels).

    Images are flattened to 64 values; use `dequantize_logit` to make them continuous.
    """
    bunch = _sklearn_datasets().load_digits()
    order = np.random.default_rng(seed).permutation(len(bunch.data))
    data, labels = bunch.data[order].astype(np.int32), bunch.target[order]
    num_test = int(round(test_fraction * len(data)))
    return data[num_test:], data[:num_test], labels[num_test:], labels[:num_test]


def dequantize_logit(x_int: np.ndarray, *, seed: int = 0, levels: int = DIGIT_LEVELS):
    """Uniform dequantisation then RealNVP's logit transform.

    u = (x + noise) / levels in (0, 1); y = logit(alpha + (1 - 2 alpha) u).

    Returns:
      (y, log_det): y float32 of x's shape, and per row the log |dy/du| summed over
      the row, so log p(u) = log p(y) + log_det (add -D log levels for the
      dequantised log-likelihood of the integers).
    """
    u = (x_int + np.random.default_rng(seed).uniform(size=x_int.shape)) / levels
    p = LOGIT_ALPHA + (1 - 2 * LOGIT_ALPHA) * u
    y = np.log(p) - np.log1p(-p)
    log_det = np.sum(np.log(1 - 2 * LOGIT_ALPHA) - np.log(p) - np.log1p(-p), axis=-1)
    return y.astype(np.float32), log_det


def undo_logit(y: np.ndarray, *, levels: int = DIGIT_LEVELS) -> np.ndarray:
    """Maps logit-space values back to pixel intensities in [0, levels - 1]."""
    p = 1 / (1 + np.exp(-np.asarray(y, np.float64)))
    u = (p - LOGIT_ALPHA) / (1 - 2 * LOGIT_ALPHA)
    return np.clip(u * levels, 0, levels - 1)
