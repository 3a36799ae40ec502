"""Smoke tests of examples/digits_density.py: each model runs end to end on a tiny budget."""

import math

import numpy as np
import pytest


@pytest.mark.parametrize("model", ["MAF", "NSF"])
def test_digits_density_runs(tmp_path, load_example, model):
    argv = ["--models", model, "--steps", "3", "--batch-size", "32", "--noise-copies", "1", "--num-samples", "6"]
    metrics = load_example("digits_density").main([*argv, "--out", str(tmp_path)])
    assert list(metrics) == [model]
    assert set(metrics[model]) == {"test_log_lik", "bits_per_dim", "train_seconds"}
    assert all(math.isfinite(value) for value in metrics[model].values())
    # A lower bound on log P(digits) <= 0 gives positive bits/dim; 3 steps from the start stay far from 0.
    assert metrics[model]["bits_per_dim"] > 1
    assert (tmp_path / "digits_density.png").stat().st_size > 0


@pytest.mark.parametrize("argv", [["--models", "glow"], ["--num-samples", "7"]])
def test_digits_density_rejects_bad_arguments(tmp_path, capsys, load_example, argv):
    with pytest.raises(SystemExit):
        load_example("digits_density").main([*argv, "--out", str(tmp_path)])
    assert "error:" in capsys.readouterr().err


def test_mosaic_places_images_row_by_row(load_example):
    digits_density = load_example("digits_density")
    images = np.arange(4 * 8 * 8, dtype=float).reshape(4, 8, 8)
    tiled = digits_density.mosaic(images, columns=2)
    assert tiled.shape == (2 * 9 - 1, 2 * 9 - 1)
    for index, image in enumerate(images):
        row, column = divmod(index, 2)
        np.testing.assert_array_equal(tiled[9 * row : 9 * row + 8, 9 * column : 9 * column + 8], image)
    assert np.isnan(tiled[8, :]).all() and np.isnan(tiled[:, 8]).all()
