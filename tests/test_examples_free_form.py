"""Smoke tests of the free-form, residual and VI examples: each runs end to end on a tiny budget."""

import math

import pytest


@pytest.mark.parametrize("model", ["RealNVP", "residual flow", "Flow++", "NSF (reference)"])
def test_toy_density_runs(tmp_path, model, load_example):
    toy_density = load_example("toy_density")
    argv = ["--models", model, "--steps", "3", "--batch-size", "32", "--grid-size", "8", "--num-samples", "16"]
    test_log_liks = toy_density.main([*argv, "--out", str(tmp_path)])
    assert list(test_log_liks) == [model]
    assert math.isfinite(test_log_liks[model])
    assert (tmp_path / "toy_density.png").stat().st_size > 0


def test_toy_density_rejects_unknown_model(tmp_path, load_example, capsys):
    with pytest.raises(SystemExit) as exited:
        load_example("toy_density").main(["--models", "glow", "--out", str(tmp_path)])
    assert exited.value.code == 2 and "glow" in capsys.readouterr().err


def test_planar_vi_runs(tmp_path, load_example):
    metrics = load_example("planar_vi").main(["--steps", "3", "--num-samples", "8", "--out", str(tmp_path)])
    assert set(metrics) == {"planar (32 layers)", "Sylvester (16 layers)"}
    for values in metrics.values():
        assert set(values) == {"elbo", "ess", "k_hat"}
        assert all(math.isfinite(value) for value in values.values())
        assert 0 < values["ess"] <= 1
    assert (tmp_path / "planar_vi.png").stat().st_size > 0


def test_banana_vi_runs_without_files_from_outside_the_repository(tmp_path, load_example):
    metrics = load_example("banana_vi").main(
        ["--steps", "4", "--anneal-steps", "2", "--num-samples", "8", "--out", str(tmp_path)]
    )
    assert all(math.isfinite(value) for value in metrics.values()) and 0 < metrics["ess"] <= 1
    assert (tmp_path / "banana_vi.png").stat().st_size > 0
