"""Smoke tests of the free-form and residual examples: each runs end to end on a tiny budget."""

import importlib.util
import math
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load_example(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("model", ["RealNVP", "residual flow", "Flow++", "NSF (reference)"])
def test_toy_density_runs(tmp_path, model):
    toy_density = _load_example("toy_density")
    argv = ["--models", model, "--steps", "3", "--batch-size", "32", "--grid-size", "8", "--num-samples", "16"]
    test_log_liks = toy_density.main([*argv, "--out", str(tmp_path)])
    assert list(test_log_liks) == [model]
    assert math.isfinite(test_log_liks[model])
    assert (tmp_path / "toy_density.png").stat().st_size > 0


def test_toy_density_rejects_unknown_model(tmp_path):
    with pytest.raises(SystemExit):
        _load_example("toy_density").main(["--models", "glow", "--out", str(tmp_path)])


def test_planar_vi_runs(tmp_path):
    metrics = _load_example("planar_vi").main(["--steps", "3", "--num-samples", "8", "--out", str(tmp_path)])
    assert set(metrics) == {"planar (32 layers)", "Sylvester (16 layers)"}
    for values in metrics.values():
        assert set(values) == {"elbo", "ess", "k_hat"}
        assert all(math.isfinite(value) for value in values.values())
        assert 0 < values["ess"] <= 1
    assert (tmp_path / "planar_vi.png").stat().st_size > 0
