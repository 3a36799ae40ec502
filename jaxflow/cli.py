"""The `jaxflow` command line: fit a flow to a table of numbers, then sample, score and plot it.

    jaxflow fit data.csv --flow nsf --columns x,y --steps 2000 --out runs/xy
    jaxflow sample runs/xy -n 10000 -o samples.csv
    jaxflow log-prob runs/xy new.csv -o log_prob.csv
    jaxflow plot runs/xy --data data.csv -o pairs.png
    jaxflow bench --suite quick

(or `python -m jaxflow.cli ...`). `fit` standardises every column with the mean and sd of the training rows, in
float64 on the host, and fits the flow to the standardised rows; `sample` and
`log-prob` map back in float64, so a run is a density in the data's own units:
`log-prob` includes the log-det of the standardisation. Running
the same `fit` again resumes it; run directories are described in `jaxflow._cli_run`.
Bad input ends with one line, "jaxflow: error: ...", on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import inspect
import json
import math
import sys
from pathlib import Path

import jax
import numpy as np

import jaxflow
from jaxflow import _cli_run as runs
from jaxflow import flows
from jaxflow._cli_io import (
    CliError,
    Table,
    atomic_write,
    checked_output,
    column_labels,
    columns_from_option,
    columns_like,
    image_formats,
    in_file_order,
    pairs_figure,
    read_table,
    write_table,
)

FLOWS = {name: getattr(flows, name) for name in flows.__all__ if name != "glow"}  # the vector flows: rows of a table
MAX_PLOT_COLUMNS = 6


def main(argv=None) -> int:
    """Runs the command line; returns the exit status (0 success, 2 bad input, 130 interrupted)."""
    parser = _parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra and args.command != "bench":
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        return args.handler(args, extra) or 0
    except CliError as error:
        print(f"jaxflow: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("jaxflow: interrupted (a `fit` resumes from its last checkpoint when run again)", file=sys.stderr)
        return 130


def build_model(config: dict) -> jaxflow.Flow:
    """The flow a run's config describes, on standardised rows (`_cli_run.standardise`)."""
    dim = len(config["columns"]["indices"])
    options = {name: tuple(v) if isinstance(v, list) else v for name, v in config["flow_options"].items()}
    if config["flow"] not in FLOWS:
        raise CliError(f"unknown flow {config['flow']!r}; known: {', '.join(sorted(FLOWS))}")
    try:
        flow = FLOWS[config["flow"]](dim, **options)
    except (TypeError, ValueError) as error:
        raise CliError(f"flow {config['flow']} on {dim} column(s): {error}") from None
    return flow


def _fit(args, extra) -> None:
    del extra
    flow = _flow_options(args)
    table = read_table(args.data, columns_from_option(args.columns), _header(args))
    train_rows, valid_rows = _split(table.values, args.validation, args.seed)
    if args.patience is not None and valid_rows is None:
        raise CliError(
            f"--patience needs validation rows, and --validation {args.validation} holds out none of the "
            f"{len(table.values)} rows: raise it"
        )
    config = _fit_config(args, flow, table, train_rows, valid_rows)
    model = build_model(config)  # before staging: a flow that does not fit the columns leaves nothing behind
    _warn_of_whole_numbers(table.values, _column_labels(config))
    out = Path(args.out)
    staged = runs.stage(out, config)
    if staged is None:
        done = json.loads((out / runs.HISTORY).read_text())
        why = "stopped early by --patience" if done["stopped_early"] else "raise --steps to train longer"
        print(f"jaxflow: {out} is already complete ({done['num_steps']} steps; {why}); nothing to do", file=sys.stderr)
        return
    if staged.step is not None:
        print(f"jaxflow: resuming {out} from step {staged.step} of {config['budget']['num_steps']}", file=sys.stderr)
    params, history = runs.train(model, config, train_rows, valid_rows, staged.directory, args.progress)
    runs.save_arrays(staged.directory / runs.PARAMS, runs.tree_arrays("leaf", params))
    runs.write_json(staged.directory / runs.HISTORY, history)
    runs.publish(staged.directory, out)
    print(f"jaxflow: wrote {out} ({_fit_summary(history)})")


def _fit_summary(history: dict) -> str:
    """Steps taken, skipped ones, and the best validation loss, of a history.json."""
    summary = f"{history['num_steps']} steps"
    skipped = sum(history["skipped"])
    if skipped:
        summary += f", {skipped} of them skipped for a non-finite loss or gradient, a lower --lr may help"
    best = history.get("best_validation_loss")
    if best is not None:
        summary += f", best validation loss {best:.4f} at step {history['best_step']}"
    return summary


def _fit_config(args, flow: tuple[str, dict], table: Table, train_rows: np.ndarray, valid_rows) -> dict:
    """config.json of a fit: JSON types throughout, so that a loaded config compares equal.

    Every row, held out or not, must standardise (by the training rows) into float32's range.
    """
    flow_name, flow_options = flow
    mean, sd = runs.standardisation(train_rows)
    columns = table.names or table.indices
    if (sd == 0).any():
        column = columns[int(np.argmax(sd == 0))]
        raise CliError(f"column {column!r} is constant on the training rows; a density needs it to vary: drop it")
    with np.errstate(over="ignore"):
        every_row = train_rows if valid_rows is None else np.concatenate([train_rows, valid_rows])
        too_spread = ~runs.within_float32((every_row - mean) / sd).all(axis=0)
    if too_spread.any():
        column = columns[int(np.argmax(too_spread))]
        raise CliError(
            f"column {column!r} spans more standard deviations than float32 holds (or values beyond float64's "
            "range once centred); rescale it or remove its outliers"
        )
    steps_per_epoch = len(train_rows) // min(args.batch_size, len(train_rows))
    num_steps = args.steps if args.epochs is None else args.epochs * steps_per_epoch
    config = {
        "format": runs.FORMAT,
        "jaxflow_version": jaxflow.__version__,
        "flow": flow_name,
        "flow_options": flow_options,
        "columns": {"names": table.names, "indices": table.indices, "file_width": table.width},
        "data_path": str(Path(args.data).resolve()),
        "data": {"rows": len(table.values), "sha256": hashlib.sha256(table.values.tobytes()).hexdigest()},
        "standardisation": {"mean": mean.tolist(), "sd": sd.tolist()},
        "training": {
            "seed": args.seed, "batch_size": args.batch_size, "learning_rate": args.lr, "clip_norm": args.clip_norm,
            "validation_fraction": args.validation, "patience": args.patience, "eval_every": args.eval_every,
        },
        "checkpoint_every": args.checkpoint_every,
        "budget": {"num_steps": num_steps, "epochs": args.epochs},
    }
    return json.loads(json.dumps(config))


def _flow_options(args) -> tuple[str, dict]:
    """(builder name, all its keyword options) from --flow, the options that shape it, and --seed."""
    builder = FLOWS[args.flow]
    given = {name: getattr(args, name) for name in ("layers", "hidden", "bins", "permute", "actnorm")}
    given = {name: value for name, value in given.items() if value is not None}
    signature = inspect.signature(builder)
    for name in given:
        if name not in signature.parameters:
            raise CliError(f"--{name} does not apply to --flow {args.flow}")
    if "seed" in signature.parameters:  # the permutations' seed, for the flows that draw any
        given["seed"] = args.seed
    bound = signature.bind(None, **given)  # None: the dimension, which follows from the columns
    bound.apply_defaults()
    options = dict(bound.arguments)
    del options[next(iter(signature.parameters))]
    return builder.__name__, options


def _split(values: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(training rows, validation rows or None), a random `fraction` held out."""
    if not 0 <= fraction < 1:
        raise CliError(f"--validation must be in [0, 1), got {fraction}")
    order = np.random.default_rng(seed).permutation(len(values))
    num_valid = round(fraction * len(values))
    if len(values) - num_valid < 2:
        raise CliError(f"{len(values)} rows leave {len(values) - num_valid} for training; at least 2 are needed")
    return values[order[num_valid:]], values[order[:num_valid]] if num_valid else None


def _load_run(run) -> tuple[dict, jaxflow.Flow, dict]:
    """(config, model, params) of a finished run."""
    config = runs.read_config(run)
    try:
        model = build_model(config)
    except (KeyError, TypeError):
        raise CliError(f"{run}/{runs.CONFIG} lacks entries this jaxflow needs (written by another version?)") from None
    template = jax.eval_shape(model.init, jax.random.key(0))
    params = runs.arrays_tree(runs.load_arrays(Path(run) / runs.PARAMS), "leaf", template, f"{run}/{runs.PARAMS}")
    return config, model, params


def _read_like_run(path, config: dict, header: bool | None) -> np.ndarray:
    columns = config["columns"]
    return read_table(path, columns_like(columns["names"], columns["indices"], columns["file_width"]), header).values


def _column_labels(config: dict) -> list[str]:
    return column_labels(config["columns"]["names"], config["columns"]["indices"])


def _warn_of_whole_numbers(values: np.ndarray, labels: list[str]) -> None:
    """Warns (stderr) of columns holding only whole numbers: a density fitted to them piles onto the integers."""
    whole = [label for label, column in zip(labels, values.T) if np.array_equal(column, np.round(column))]
    if whole:
        print(
            f"jaxflow: warning: only whole numbers in {', '.join(whole)}; a continuous density fitted to them "
            "piles up on the integers and its log-density grows without bound: add uniform noise in [0, 1) "
            "to such columns first (dequantise) unless they are measurements that happen to be whole",
            file=sys.stderr,
        )


def _draw(config, model, params, count: int, seed: int) -> np.ndarray:
    """(count, dim) float64 samples in the data's units, drawn in blocks of at most 65536 (one compilation)."""
    block = min(count, 65536)
    sample = jax.jit(model.sample, static_argnums=2)
    keys = jax.random.split(jax.random.key(seed), -(-count // block))
    z = np.concatenate([np.asarray(sample(params, key, (block,))) for key in keys])[:count]
    return runs.unstandardise(config, z)


def _score(config, model, params, x: np.ndarray) -> np.ndarray:
    """float64 log q(x) per row in the data's units, in blocks of at most 8192 rows (the last padded: one
    compilation). Rows farther out than float32 holds once standardised (beyond ~3e38 sds) get -inf."""
    block = min(len(x), 8192)
    z = runs.standardise(config, x, np.float64)
    beyond = ~runs.within_float32(z).all(axis=1)
    z = np.where(beyond[:, None], 0.0, z).astype(np.float32)
    padded = np.concatenate([z, np.repeat(z[:1], -len(z) % block, axis=0)])
    log_prob = jax.jit(model.log_prob)
    blocks = np.split(padded, len(padded) // block)
    log_q = np.concatenate([np.asarray(log_prob(params, rows), np.float64) for rows in blocks])[: len(x)]
    return np.where(beyond, -np.inf, log_q + runs.standardise_log_det(config))


def _sample(args, extra) -> None:
    del extra
    checked_output(args.output)
    config, model, params = _load_run(args.run)
    columns = config["columns"]
    draws, labels = in_file_order(
        _draw(config, model, params, args.n, args.seed), _column_labels(config), columns["indices"],
        columns["file_width"],
    )
    write_table(args.output, draws, labels)


def _log_prob(args, extra) -> None:
    del extra
    checked_output(args.output)
    config, model, params = _load_run(args.run)
    data = _read_like_run(args.data, config, _header(args))
    write_table(args.output, _score(config, model, params, data), ["log_prob"])


def _plot(args, extra) -> None:
    del extra
    output = checked_output(args.output, image_formats())
    config, model, params = _load_run(args.run)
    header = _header(args)
    if args.data is None and header is not None:
        raise CliError("--header describes the --data file: give --data, or drop --header")
    data = None if args.data is None else _read_like_run(args.data, config, header)
    samples = _draw(config, model, params, args.samples, args.seed)
    labels = _column_labels(config)
    if len(labels) > MAX_PLOT_COLUMNS:
        print(f"jaxflow: plotting the first {MAX_PLOT_COLUMNS} of {len(labels)} columns", file=sys.stderr)
    figure = pairs_figure(samples, data, labels[:MAX_PLOT_COLUMNS], args.seed)
    atomic_write(output, lambda f: figure.savefig(f, format=output.suffix.lower().lstrip("."), dpi=100))


def _bench(args, extra) -> int:
    del args
    root = Path(__file__).resolve().parents[1]
    if (root / "benchmarks" / "run.py").is_file() and str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        suite = importlib.import_module("benchmarks.run")
    except ModuleNotFoundError as error:
        if error.name in ("benchmarks", "benchmarks.run"):
            raise CliError(
                "the benchmark suite ships with the source repository (benchmarks/run.py), not with the installed "
                "package: run `jaxflow bench` from an editable install of a checkout"
            ) from None
        raise CliError(f"the benchmarks need {error.name}: pip install 'jaxflow[bench]'") from None
    return suite.main(extra) or 0


class _Parser(argparse.ArgumentParser):
    """Turns argparse's errors into CliError, so that every error reads the same."""

    def error(self, message):
        raise CliError(f"{message} (see `{self.prog} --help`)")


def _argument_type(kind, accepts, expected: str):
    """An argparse type: `kind(text)` if `accepts` it, else the error "expected {expected}, got {text!r}"."""

    def parse(text):
        try:
            value = kind(text)
            accepted = accepts(value)
        except ValueError:
            accepted = False
        if not accepted:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


def _positive(kind):
    """The argparse type of a positive, finite int or float."""
    return _argument_type(kind, lambda value: 0 < value < math.inf, f"a positive, finite {kind.__name__}")


_seed = _argument_type(int, lambda value: 0 <= value < 2**32, f"an integer from 0 to {2**32 - 1}")

_HEADER_CHOICES = {"auto": None, "yes": True, "no": False}


def _add_header_option(command, file: str) -> None:
    command.add_argument(
        "--header", choices=_HEADER_CHOICES, default="auto",
        help=f"whether the first line of {file} names its columns (auto: when none of its cells is a number)",
    )


def _header(args) -> bool | None:
    """`--header` as `read_table` takes it: True, False, or None to guess."""
    return _HEADER_CHOICES[args.header]


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="jaxflow", description="Normalising flows on tables of numbers: fit, sample, log-prob, plot.")
    parser.add_argument("--version", action="version", version=f"jaxflow {jaxflow.__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    fit = commands.add_parser("fit", help="fit a flow to the rows of a .csv or .npy file (resumable)")
    fit.add_argument("data", metavar="DATA",
                     help=".csv/.tsv/.txt (header row optional; a .txt may be whitespace-separated) or .npy")
    fit.add_argument("--out", required=True, metavar="RUN", help="run directory to write (or resume)")
    fit.add_argument("--flow", choices=sorted(FLOWS), default="nsf")
    fit.add_argument("--layers", type=_positive(int))
    fit.add_argument("--hidden", type=_positive(int), nargs="+", metavar="WIDTH", help="hidden layer widths")
    fit.add_argument("--bins", type=_positive(int), help="spline bins (nsf flows)")
    fit.add_argument("--permute", choices=("random", "reverse", "none"))
    fit.add_argument("--actnorm", action=argparse.BooleanOptionalAction,
                     help="a trainable ActNorm before every layer (default: the flow's own, on for flowpp "
                     "and residual_flow only); they start as the identity, about what setting them from "
                     "the standardised rows would give")
    fit.add_argument("--columns", help="comma-separated header names or 0-based indices (default: all)")
    _add_header_option(fit, "DATA")
    budget = fit.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=_positive(int), default=1000)
    budget.add_argument("--epochs", type=_positive(int))
    fit.add_argument("--batch-size", type=_positive(int), default=256)
    fit.add_argument("--lr", type=_positive(float), default=1e-3, help="Adam learning rate")
    fit.add_argument("--clip-norm", type=_positive(float))
    fit.add_argument("--validation", type=float, default=0.1, help="share of rows held out (0 for none)")
    fit.add_argument("--eval-every", type=_positive(int), default=100, metavar="STEPS",
                     help="steps between validation evaluations (and progress updates)")
    fit.add_argument("--patience", type=_positive(int),
                     help="stop after this many evaluations without a better validation loss")
    fit.add_argument("--checkpoint-every", type=_positive(int), default=1000, metavar="STEPS",
                     help="steps between checkpoints (rounded up to a multiple of --eval-every)")
    fit.add_argument("--seed", type=_seed, default=0,
                     help="seed of the split, the init, the batches and the permutations")
    fit.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    fit.set_defaults(handler=_fit)

    sample = commands.add_parser("sample", help="draw samples from a fitted run")
    sample.add_argument("run", metavar="RUN")
    sample.add_argument("-n", type=_positive(int), required=True, help="number of samples")
    sample.add_argument("-o", "--output", required=True, help=".csv or .npy")
    sample.add_argument("--seed", type=_seed, default=0)
    sample.set_defaults(handler=_sample)

    log_prob = commands.add_parser("log-prob", help="log density of each row of DATA, in the data's units")
    log_prob.add_argument("run", metavar="RUN")
    log_prob.add_argument("data", metavar="DATA", help="the fit's columns: by header name, or the same layout")
    log_prob.add_argument("-o", "--output", required=True, help=".csv or .npy")
    _add_header_option(log_prob, "DATA")
    log_prob.set_defaults(handler=_log_prob)

    plot = commands.add_parser("plot", help="pairwise marginals of samples (and data) as an image")
    plot.add_argument("run", metavar="RUN")
    plot.add_argument("--data", help="data to overlay, read like log-prob's DATA")
    _add_header_option(plot, "the --data file")
    plot.add_argument("-o", "--output", required=True, help="image file, e.g. pairs.png")
    plot.add_argument("--samples", type=_positive(int), default=2000)
    plot.add_argument("--seed", type=_seed, default=0)
    plot.set_defaults(handler=_plot)

    bench = commands.add_parser("bench", add_help=False, help="the benchmark suite (options go to benchmarks.run)")
    bench.set_defaults(handler=_bench)
    return parser


if __name__ == "__main__":
    sys.exit(main())
