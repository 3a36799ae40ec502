"""The demo's reference posterior: gold-standard draws when the shared data is there, NUTS otherwise."""

import jax

from jaxflow import targets


def test_without_the_shared_archive_the_reference_comes_from_nuts(tmp_path, load_example):
    target = targets.banana()
    draws, source = load_example("demo").reference_posterior(
        target, key=jax.random.key(0), path=tmp_path / "missing.npz", num_warmup=300, num_samples=1500
    )
    assert source.startswith("NUTS") and draws.shape == (1500, 2)
    # The banana's first coordinate is N(0, 10^2) by construction (see `targets.banana`).
    assert abs(draws[:, 0].mean()) < 3.0 and abs(draws[:, 0].std() - 10.0) < 2.5
