"""Forward KL on sklearn's digits: jaxflow against flowjax's `fit_to_data`, same model and budget.

Both libraries fit the same architecture (MAF: 5 affine MADE layers, each library's own affine
transformer, jaxflow's bounded `exp_affine` and flowjax's softplus scale; NSF: 8 rational-quadratic
spline couplings with 8 bins on [-4, 4]; networks 2x128) to the same dequantised, logit-transformed
digits with Adam at the same learning rate, batch size and number of epochs, keeping the
parameters with the best validation loss. jaxflow's networks start with a zero output layer (a
fresh flow is the identity), flowjax's with a random one: flowjax is fitted both as it ships and
with its output layers zeroed ("identity start"), which separates that choice from the rest.
Each fit is repeated with `--seeds` seeds (network initialisation, permutations, batches), the
libraries taking turns within each seed. Reported per model and library: the median wall time
of a fit (compilation included) and the mean, with its standard error over seeds, of the test
log-likelihood in nats per image and of the bits/dim of the dequantised integers.

    python -m benchmarks.digits --out results/digits.json
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import peers
from benchmarks._common import check_names, environment, markdown_table, positive_int, write_json
from jaxflow import datasets
from jaxflow.train import forward_kl

CONFIGS = {"maf": dict(layers=5, hidden=(128, 128)), "nsf": dict(layers=8, hidden=(128, 128), bins=8)}


def fit_jaxflow(model_name, train, args, seed):
    init_key, fit_key = jax.random.split(jax.random.key(seed))
    flow = _jaxflow_flow(model_name, train.shape[1], seed)
    steps_per_epoch = int(len(train) * (1 - args.validation)) // args.batch_size
    params, _ = forward_kl.fit(
        fit_key, flow, flow.init(init_key), train, optimizer=optax.adam(args.learning_rate),
        batch_size=args.batch_size, num_steps=args.epochs * steps_per_epoch, validation_fraction=args.validation,
        chunk_size=steps_per_epoch, progress=False,
    )
    return lambda x: flow.log_prob(params, x)


def _jaxflow_flow(model_name, dim, seed):
    from jaxflow import flows

    config = CONFIGS[model_name]
    if model_name == "maf":
        return flows.maf(dim, seed=seed, **config)
    return flows.nsf_coupling(dim, bound=4.0, seed=seed, **config)


def fit_flowjax(model_name, train, args, seed, *, identity_start=False):
    """`identity_start`: zero the networks' output layers, so that the flow starts as the identity, as jaxflow's."""
    import paramax
    from flowjax.train import fit_to_data

    init_key, fit_key = jax.random.split(jax.random.key(seed))
    flow = _flowjax_flow(model_name, train.shape[1], init_key)
    if identity_start:
        flow = _zero_output_layers(flow)
    flow, _ = fit_to_data(
        fit_key, flow, train, learning_rate=args.learning_rate, max_epochs=args.epochs,
        max_patience=args.epochs, batch_size=args.batch_size, val_prop=args.validation, show_progress=False,
    )
    flow = paramax.unwrap(flow)
    return lambda x: flow.log_prob(x)  # a bound method of an equinox module is not hashable for jit


def _flowjax_flow(model_name, dim, key):
    """flowjax's flow of `peers`, its base held fixed like jaxflow's standard normal."""
    import equinox as eqx
    import paramax

    config = CONFIGS[model_name]
    flow = peers.flowjax_flow(model_name, key, dim, config["layers"], config["hidden"], config.get("bins", 8))
    return eqx.tree_at(lambda tree: tree.base_dist, flow, replace_fn=paramax.non_trainable)


def _zero_output_layers(flow):
    """`flow` with the last layer of each of its MLPs zeroed (masks, being boolean, stay)."""
    import equinox as eqx

    def zeroed(layer):
        return jax.tree.map(lambda a: jnp.zeros_like(a) if eqx.is_inexact_array(a) else a, layer)

    def start_at_zero(module):
        if not isinstance(module, eqx.nn.MLP):
            return module
        return eqx.tree_at(lambda mlp: mlp.layers[-1], module, replace_fn=zeroed)

    return jax.tree.map(start_at_zero, flow, is_leaf=lambda module: isinstance(module, eqx.nn.MLP))


FITS = {
    "jaxflow": fit_jaxflow,
    "flowjax": fit_flowjax,
    "flowjax, identity start": functools.partial(fit_flowjax, identity_start=True),
}


def mean_and_standard_error(values) -> tuple[float, float]:
    """The mean of `values` and its standard error (0 for a single value)."""
    values = np.asarray(values, np.float64)
    spread = values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else 0.0
    return float(values.mean()), float(spread)


def summary_row(model_name, library, fits) -> dict:
    """One table row from the fits of every seed: `fits` holds (seconds, test log-lik, bits/dim) each."""
    seconds, log_liks, bits = zip(*fits)
    (log_lik, log_lik_se), (bits_per_dim, bits_se) = mean_and_standard_error(log_liks), mean_and_standard_error(bits)
    return {
        "model": model_name, "library": library, "seeds": len(fits), "fit_s": statistics.median(seconds),
        "test_log_lik": f"{log_lik:.2f} ± {log_lik_se:.2f}", "bits_per_dim": f"{bits_per_dim:.3f} ± {bits_se:.3f}",
        "test_log_lik_mean": log_lik, "test_log_lik_se": log_lik_se, "test_log_lik_per_seed": list(log_liks),
        "bits_per_dim_mean": bits_per_dim, "bits_per_dim_se": bits_se, "fit_s_per_seed": list(seconds),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="maf,nsf")
    parser.add_argument("--epochs", type=positive_int, default=40)
    parser.add_argument("--batch-size", type=positive_int, default=256)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--validation", type=float, default=0.1)
    parser.add_argument("--seeds", type=positive_int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    check_names(parser, "models", args.models, CONFIGS)

    train_int, test_int, _, _ = datasets.digits()
    train, _ = datasets.dequantize_logit(train_int, seed=0)
    test, test_log_det = datasets.dequantize_logit(test_int, seed=1)
    dim = train.shape[1]
    libraries = list(FITS) if importlib.util.find_spec("flowjax") else ["jaxflow"]
    rows = []
    for model_name in args.models.split(","):
        fits = {library: [] for library in libraries}
        for seed in range(args.seeds):
            for library in libraries:
                start = time.perf_counter()
                log_prob = FITS[library](model_name, train, args, seed)
                test_log_prob = np.asarray(jax.jit(log_prob)(test))
                seconds = time.perf_counter() - start
                log_likelihood = datasets.integer_log_likelihood(test_log_prob, test_log_det, dim)
                bits = float(-log_likelihood.mean() / (dim * np.log(2)))
                fits[library].append((seconds, float(test_log_prob.mean()), bits))
                print(model_name, library, f"seed {seed}:", fits[library][-1], flush=True)
        rows += [summary_row(model_name, library, fits[library]) for library in libraries]
    print(f"\ndigits, {args.epochs} epochs, batch {args.batch_size}, Adam {args.learning_rate}, {args.seeds} seeds")
    print(markdown_table(rows, ["model", "library", "fit_s", "test_log_lik", "bits_per_dim"]))
    write_json(args.out, {"benchmark": "digits", "environment": environment(), "config": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
