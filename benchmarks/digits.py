"""Forward KL on sklearn's digits: jaxflow against flowjax's `fit_to_data`, same model and budget.

Both libraries fit the same architecture (MAF: 5 affine MADE layers; NSF: 8 rational-quadratic
spline couplings with 8 bins on [-4, 4]; networks 2x128) to the same dequantised, logit-transformed
digits with Adam at the same learning rate, batch size and number of epochs, keeping the
parameters with the best validation loss. Reported: wall time of the fit (compilation included)
and test log-likelihood in nats per image and bits/dim of the dequantised integers.

    python -m benchmarks.digits --out results/digits.json
"""

from __future__ import annotations

import argparse
import importlib.util
import time

import jax
import numpy as np
import optax

from benchmarks._common import environment, markdown_table, write_json
from jaxflow import datasets
from jaxflow.train import forward_kl

CONFIGS = {"maf": dict(layers=5, hidden=(128, 128)), "nsf": dict(layers=8, hidden=(128, 128), bins=8)}


def fit_jaxflow(model_name, train, args):
    flow = _jaxflow_flow(model_name, train.shape[1])
    steps_per_epoch = int(len(train) * (1 - args.validation)) // args.batch_size
    params, _ = forward_kl.fit(
        jax.random.key(1), flow, flow.init(jax.random.key(0)), train, optimizer=optax.adam(args.learning_rate),
        batch_size=args.batch_size, num_steps=args.epochs * steps_per_epoch, validation_fraction=args.validation,
        chunk_size=steps_per_epoch, progress=False,
    )
    return lambda x: flow.log_prob(params, x)


def _jaxflow_flow(model_name, dim):
    from jaxflow import flows

    config = CONFIGS[model_name]
    if model_name == "maf":
        return flows.maf(dim, **config)
    return flows.nsf_coupling(dim, bound=4.0, **config)


def fit_flowjax(model_name, train, args):
    from flowjax.train import fit_to_data

    flow = _flowjax_flow(model_name, train.shape[1])
    flow, _ = fit_to_data(
        jax.random.key(1), flow, train, learning_rate=args.learning_rate, max_epochs=args.epochs,
        max_patience=args.epochs, batch_size=args.batch_size, val_prop=args.validation, show_progress=False,
    )
    return lambda x: flow.log_prob(x)  # a bound method of an equinox module is not hashable for jit


def _flowjax_flow(model_name, dim):
    import jax.numpy as jnp
    from flowjax.bijections import Affine, RationalQuadraticSpline
    from flowjax.distributions import Normal
    from flowjax.flows import coupling_flow, masked_autoregressive_flow

    config = CONFIGS[model_name]
    common = dict(base_dist=Normal(jnp.zeros(dim)), flow_layers=config["layers"], nn_width=128, nn_depth=2)
    if model_name == "maf":
        return masked_autoregressive_flow(jax.random.key(0), transformer=Affine(), **common)
    spline = RationalQuadraticSpline(knots=config["bins"], interval=4.0)
    return coupling_flow(jax.random.key(0), transformer=spline, **common)


FITS = {"jaxflow": fit_jaxflow, "flowjax": fit_flowjax}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="maf,nsf")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--validation", type=float, default=0.1)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    train_int, test_int, _, _ = datasets.digits()
    train, _ = datasets.dequantize_logit(train_int, seed=0)
    test, test_log_det = datasets.dequantize_logit(test_int, seed=1)
    dim = train.shape[1]
    libraries = ["jaxflow"] + (["flowjax"] if importlib.util.find_spec("flowjax") else [])
    rows = []
    for model_name in args.models.split(","):
        for library in libraries:
            start = time.perf_counter()
            log_prob = FITS[library](model_name, train, args)
            test_log_prob = np.asarray(jax.jit(log_prob)(test))
            seconds = time.perf_counter() - start
            log_likelihood = datasets.integer_log_likelihood(test_log_prob, test_log_det, dim)
            rows.append({
                "model": model_name, "library": library, "fit_s": seconds,
                "test_log_lik_logit_space": float(test_log_prob.mean()),
                "test_bits_per_dim": float(-log_likelihood.mean() / (dim * np.log(2))),
            })
            print(rows[-1], flush=True)
    print(f"\ndigits, {args.epochs} epochs, batch {args.batch_size}, Adam {args.learning_rate}")
    print(markdown_table(rows, ["model", "library", "fit_s", "test_log_lik_logit_space", "test_bits_per_dim"]))
    write_json(args.out, {"benchmark": "digits", "environment": environment(), "config": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
