"""Tests of jaxflow.datasets' dequantisation helpers against scipy and direct computations."""

import warnings

import numpy as np
import pytest
from scipy import special, stats

from jaxflow import datasets
from jaxflow.datasets import LOGIT_ALPHA

LEVELS = 5


def _logit_of_unit(u):
    """RealNVP's transform of u in [0, 1), written with scipy: logit(alpha + (1 - 2 alpha) u)."""
    return special.logit(LOGIT_ALPHA + (1 - 2 * LOGIT_ALPHA) * u)


def _pixels(y, levels):
    """The pixel intensities undo_logit should return, with scipy's sigmoid."""
    u = (special.expit(np.asarray(y, np.float64)) - LOGIT_ALPHA) / (1 - 2 * LOGIT_ALPHA)
    return np.clip(levels * u, 0, levels - 1)


def _integers(num_rows, num_dims, seed=0):
    return np.random.default_rng(seed).integers(0, LEVELS, size=(num_rows, num_dims))


def test_dequantize_logit_matches_scipy_and_a_finite_difference_jacobian():
    x_int, seed, num_draws = _integers(6, 3), 3, 2
    y, log_det = datasets.dequantize_logit(x_int, seed=seed, num_draws=num_draws, levels=LEVELS)
    # The documented noise: draw k from np.random.default_rng(seed + k), draws stacked along the rows.
    noise = np.concatenate([np.random.default_rng(seed + k).uniform(size=x_int.shape) for k in range(num_draws)])
    u = (np.tile(x_int, (num_draws, 1)) + noise) / LEVELS
    step = 1e-6
    slopes = (_logit_of_unit(u + step) - _logit_of_unit(u - step)) / (2 * step)
    assert y.dtype == np.float32 and y.shape == (num_draws * 6, 3) and log_det.shape == (num_draws * 6,)
    np.testing.assert_allclose(y, _logit_of_unit(u), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(log_det, np.log(slopes).sum(axis=-1), rtol=1e-8)


def test_draws_are_stacked_single_draws_with_consecutive_seeds():
    x_int = _integers(4, 2)
    y, log_det = datasets.dequantize_logit(x_int, seed=7, num_draws=3, levels=LEVELS)
    singles = [datasets.dequantize_logit(x_int, seed=seed, levels=LEVELS) for seed in (7, 8, 9)]
    np.testing.assert_array_equal(y, np.concatenate([single_y for single_y, _ in singles]))
    np.testing.assert_array_equal(log_det, np.concatenate([single_log_det for _, single_log_det in singles]))
    assert not np.allclose(singles[0][0], singles[1][0])  # different noise per draw


def test_integer_log_likelihood_integrates_to_the_logit_space_mass():
    # Under a standard normal on y, the density of v = x + noise on [0, L)^2 holds the normal's mass of
    # the image of [0, L)^2, the square [logit(alpha), logit(1 - alpha)]^2. Estimate its integral as
    # L^2 times the mean density at v uniform on [0, L)^2: every cell, equally often, uniform noise.
    cells = np.stack(np.meshgrid(np.arange(LEVELS), np.arange(LEVELS)), -1).reshape(-1, 2)
    y, log_det = datasets.dequantize_logit(np.repeat(cells, 200, axis=0), num_draws=20, levels=LEVELS)
    log_prob = stats.norm.logpdf(y.astype(np.float64)).sum(axis=-1)
    density = np.exp(datasets.integer_log_likelihood(log_prob, log_det, 2, levels=LEVELS))
    edge = special.logit(LOGIT_ALPHA)
    mass = (stats.norm.cdf(-edge) - stats.norm.cdf(edge)) ** 2
    standard_error = LEVELS**2 * density.std() / np.sqrt(len(density))
    assert abs(LEVELS**2 * density.mean() - mass) < 4 * standard_error, (LEVELS**2 * density.mean(), mass)
    assert standard_error < 0.005 * mass  # the check above is sharp enough to catch a wrong D log L term


def test_undo_logit_recovers_the_dequantised_integers():
    x_int = _integers(50, 4)
    y, _ = datasets.dequantize_logit(x_int, seed=1, levels=LEVELS)
    values = datasets.undo_logit(y, levels=LEVELS)  # x + noise, clipped to [0, L - 1]
    assert np.all(values >= x_int - 1e-4) and np.all(values < x_int + 1 + 1e-4)
    np.testing.assert_allclose(values, _pixels(y, LEVELS), rtol=1e-12, atol=1e-12)


def test_undo_logit_is_stable_for_extreme_logits():
    y = np.array([-1e4, -800.0, -40.0, -1.5, 0.0, 1.5, 40.0, 800.0, 1e4])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an overflow in exp would warn
        values = datasets.undo_logit(y)
    levels = datasets.DIGIT_LEVELS
    np.testing.assert_allclose(values, _pixels(y, levels), rtol=1e-12, atol=1e-12)
    assert values[0] == 0 and values[-1] == levels - 1 and values[4] == levels / 2


@pytest.mark.parametrize(
    ("x_int", "kwargs", "error", "match"),
    [
        (np.zeros((2, 3)), {}, TypeError, r"expected integers in \[0, 17\), got dtype float64"),
        (np.full((2, 3), 17), {}, ValueError, r"expected integers in \[0, 17\), got values in \[17, 17\]"),
        (np.zeros(3, int), {}, ValueError, r"shape \(num_rows, num_dims\), got shape \(3,\)"),
        (np.zeros((2, 3), int), {"num_draws": 0}, ValueError, "num_draws must be a positive int, got 0"),
        (np.zeros((2, 3), int), {"levels": 1.5}, ValueError, "levels must be a positive int, got 1.5"),
    ],
)
def test_dequantize_logit_rejects_bad_input(x_int, kwargs, error, match):
    with pytest.raises(error, match=match):
        datasets.dequantize_logit(x_int, **kwargs)


def test_integer_log_likelihood_rejects_bad_input():
    with pytest.raises(ValueError, match=r"same shape \(one value per row\), got \(3,\) and \(2,\)"):
        datasets.integer_log_likelihood(np.zeros(3), np.zeros(2), 64)
    with pytest.raises(ValueError, match="num_dims must be a positive int, got 0"):
        datasets.integer_log_likelihood(np.zeros(3), np.zeros(3), 0)


@pytest.mark.parametrize("test_fraction", [0, 1, -0.2, 1.5, float("nan"), True, None])
def test_digits_rejects_a_test_fraction_outside_zero_one(test_fraction):
    with pytest.raises(ValueError, match=r"test_fraction must be a number in \(0, 1\), got"):
        datasets.digits(test_fraction=test_fraction)


@pytest.mark.parametrize(("test_fraction", "num_test"), [(1e-6, 1), (0.2, 359), (1 - 1e-6, 1796)])
def test_digits_holds_out_a_rounded_share_with_an_image_on_either_side(test_fraction, num_test):
    train, test, train_labels, test_labels = datasets.digits(test_fraction=test_fraction)
    assert len(test) == len(test_labels) == num_test
    assert len(train) == len(train_labels) == 1797 - num_test  # sklearn's digits: 1797 images


@pytest.mark.parametrize("num_samples", [0, 1, 2.0])
def test_two_moons_needs_two_points_to_standardise(num_samples):
    with pytest.raises(ValueError, match="num_samples must be an int >= 2"):
        datasets.two_moons(num_samples)
