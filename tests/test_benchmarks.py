"""Smoke tests of the benchmark suite (benchmarks/run.py): a vector flow and Glow, at tiny sizes."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from benchmarks import compile_depth, dense_layout, digits, kernels, peers, run, toy2d
from jaxflow import flows

MEASURES = ("compile_s", "train_step_ms", "log_prob_per_s", "sample_per_s", "train_gflops", "flops_fraction")


def test_suite_measures_a_vector_flow_and_glow(tmp_path, monkeypatch, capsys):
    # A smaller Glow than the suite's, on a non-square image, so that the test compiles quickly.
    monkeypatch.setitem(run.MODELS, "glow", {"levels": 1, "steps_per_level": 1, "hidden_channels": 8, "num_blocks": 0})
    monkeypatch.setitem(run.IMAGE_SHAPES, "glow", (4, 2, 3))
    monkeypatch.setitem(run.MODELS, "planar", {"layers": 2, "hidden": ()})
    out = tmp_path / "bench.json"
    run.main([
        "--models", "planar,glow", "--compare", "distrax", "--repeats", "1", "--train-steps", "2",
        "--train-batch", "4", "--eval-batch", "8", "--out", str(out),
    ])
    payload = json.loads(out.read_text())

    rows = payload["rows"]
    assert [(row["model"], row["event_shape"], row["library"]) for row in rows] == [
        ("planar", [16], "jaxflow"), ("glow", [4, 2, 3], "jaxflow"),
    ]
    for row in rows:
        assert (row["train_batch"], row["eval_batch"]) == (4, 8)
        for measure in MEASURES:
            assert math.isfinite(row[measure]) and row[measure] > 0, (row["model"], measure, row[measure])
    assert payload["settings"]["repeats"] == 1 and payload["settings"]["train_steps"] == 2
    printed = capsys.readouterr().out
    assert "distrax cannot express glow" in printed
    assert "| glow | 4x2x3 | 4 | 8 | jaxflow |" in printed


def test_only_jaxflow_expresses_glow():
    config = run.MODELS["glow"]
    assert peers.build("flowjax", "glow", jax.random.key(0), (8, 8, 1), **config) is None
    assert peers.build("distrax", "glow", jax.random.key(0), (8, 8, 1), **config) is None
    model = peers.build("jaxflow", "glow", jax.random.key(0), (8, 8, 1), **config)
    assert model is not None and model.params


def test_vector_model_rejects_an_image_event_shape():
    with pytest.raises(ValueError, match=r"event shape \(dim,\), got \(8, 8, 1\)"):
        peers.build("jaxflow", "realnvp", jax.random.key(0), (8, 8, 1), layers=1, hidden=(4,))


def test_unknown_model_is_a_clear_error(capsys):
    with pytest.raises(SystemExit):
        run.main(["--models", "glow,unet"])
    assert "unknown models ['unet']" in capsys.readouterr().err


@pytest.mark.parametrize("main, argv, message", [
    (run.main, ["--models", "realnvp", "--compare", "flowjax,nflows"], "unknown compare ['nflows']"),
    (run.main, ["--repeats", "0"], "--repeats: expected an integer >= 1, got '0'"),
    (run.main, ["--train-steps", "two"], "--train-steps: expected an integer >= 1, got 'two'"),
    (compile_depth.main, ["--libraries", "nflows"], "unknown libraries ['nflows']"),
    (kernels.main, ["--compare", "nflows"], "unknown compare ['nflows']"),
    (digits.main, ["--models", "realnvp"], "unknown models ['realnvp']"),
    (toy2d.main, ["--models", "realnvp"], "unknown models ['realnvp']"),
])
def test_bad_benchmark_options_are_usage_errors(capsys, main, argv, message):
    """Before: KeyError, StatisticsError or UnboundLocalError tracebacks (digits' after loading its data)."""
    with pytest.raises(SystemExit):
        main(argv)
    assert message in capsys.readouterr().err


# Output layers that narrow (stored (out, in)) and widen (stored (in, out)); eleven hidden layers.
@pytest.mark.parametrize("dim, hidden", [(6, (8, 8)), (40, (16,)), (4, (4,) * 11)])
def test_written_out_realnvp_computes_jaxflows_density_and_samples(dim, hidden):
    """The reference row does jaxflow's work: its density is jaxflow's, its samples invert to its base draws."""
    layers = 3
    ours = peers.build("jaxflow", "realnvp", jax.random.key(0), dim, layers, hidden)
    written_out = peers.build("written-out", "realnvp", jax.random.key(0), dim, layers, hidden)
    flat, unravel = ravel_pytree(ours.params)
    params = unravel(flat + 0.2 * jax.random.normal(jax.random.key(1), flat.shape))
    x = jax.random.normal(jax.random.key(2), (5, dim))
    np.testing.assert_allclose(written_out.log_prob(params, x), ours.log_prob(params, x), rtol=1e-5, atol=1e-5)

    draws = written_out.sample(params, jax.random.key(3), 5)
    flow = flows.realnvp(dim, layers=layers, hidden=hidden)
    base_draws = jax.vmap(lambda y: flow.bijector.inverse(params["bijector"], y)[0])(draws)
    np.testing.assert_allclose(base_draws, jax.random.normal(jax.random.key(3), (5, dim)), atol=1e-4)
    assert peers.build("written-out", "maf", jax.random.key(0), dim, layers, hidden) is None


@pytest.mark.parametrize("name", ["realnvp", "maf", "nsf"])
def test_peers_train_as_many_params_as_jaxflow(name):
    """The same layers, widths, bins and conditioner inputs; only flowjax's spline has more raw params per entry."""
    dim, layers, hidden, bins = 6, 2, (8, 8), 4

    def count(library):
        model = peers.build(library, name, jax.random.key(0), dim, layers, hidden, bins)
        return None if model is None else sum(leaf.size for leaf in jax.tree.leaves(model.params))

    # flowjax's splines learn both boundary derivatives, 2 more raw params per entry.
    extra = 2 * (dim - dim // 2) * (hidden[-1] + 1) * layers if name == "nsf" else 0
    assert count("flowjax") == count("jaxflow") + extra
    assert count("distrax") in (None, count("jaxflow"))


def test_unrolled_jaxflow_rows_compute_the_same_model():
    looped = peers.build("jaxflow", "realnvp", jax.random.key(0), 4, 2, (8,))
    unrolled = peers.build("jaxflow-unrolled", "realnvp", jax.random.key(0), 4, 2, (8,))
    x = jax.random.normal(jax.random.key(1), (3, 4))
    params = jax.tree.map(lambda p: p + 0.1, looped.params)
    assert jax.numpy.allclose(unrolled.log_prob(params, x), looped.log_prob(params, x), atol=1e-5)
    assert peers.build("jaxflow-unrolled", "glow", jax.random.key(0), (8, 8, 1)) is None


def test_each_repeat_times_every_library_in_turn(monkeypatch):
    timed = []

    def prepare(model, event_shape, *, train_batch, eval_batch, train_steps):
        calls = {measure: (lambda measure=measure: timed.append((model, measure))) for measure in run.MEASURES}
        recompile = lambda: timed.append((model, "compile"))  # noqa: E731
        first_compile_s = {"A": 1.0, "B": 5.0}[model]
        per_call = {"train": train_steps, "log_prob": eval_batch, "sample": eval_batch}
        return run.Prepared(first_compile_s, recompile, 2e9, calls, per_call, dict.fromkeys(run.MEASURES, 1))

    monkeypatch.setattr(run, "prepare_model", prepare)
    measured = run.measure_models(
        {"first": "A", "second": "B"}, (4,), train_batch=4, eval_batch=8, repeats=2, train_steps=2, compile_repeats=2
    )
    # After a recompilation (which clears JAX's caches) every measure runs once untimed, then timed.
    with_compile, plain = ["compile", *run.MEASURES, *run.MEASURES], list(run.MEASURES)
    assert timed == [("A", m) for m in with_compile] + [("B", m) for m in with_compile] + [
        ("A", m) for m in plain] + [("B", m) for m in plain]
    assert set(measured) == {"first", "second"}
    # The median of the first compile (1 s, 5 s) and one fake recompilation that takes no time.
    assert 0.5 <= measured["first"]["compile_s"] < 0.6 and 2.5 <= measured["second"]["compile_s"] < 2.6
    for measures in measured.values():
        timed_measures = [name for name in MEASURES if name != "flops_fraction"]  # the suite adds that one per row
        assert all(math.isfinite(measures[name]) and measures[name] > 0 for name in timed_measures)


@pytest.mark.parametrize("one_call_s, repeats", [(0.004, 5), (0.0199, 2), (0.03, 1)])
def test_short_calls_are_repeated_within_one_timing(monkeypatch, one_call_s, repeats):
    monkeypatch.setattr(run, "_seconds", lambda call: one_call_s)
    calls = []
    repeated, count = run._repeated(lambda: calls.append(1))
    repeated()
    assert len(calls) == repeats and count == repeats


def test_throughputs_count_every_repeat(monkeypatch):
    monkeypatch.setattr(run, "_seconds", lambda call: 0.004)  # every call "short": 5 per timing
    model = peers.build("jaxflow", "planar", jax.random.key(0), (3,), layers=2, hidden=())
    ready = run.prepare_model(model, (3,), train_batch=4, eval_batch=8, train_steps=2)
    assert ready.repeats == {"train": 5, "log_prob": 5, "sample": 5}
    assert ready.per_call == {"train": 10, "log_prob": 40, "sample": 40}


@pytest.mark.parametrize("option, value, message", [
    ("--models", "realnvp,unet", "unknown models ['unet']"),
    ("--measures", "train,speed", "unknown measures ['speed']"),
])
def test_kernel_profile_names_unknown_choices(capsys, option, value, message):
    with pytest.raises(SystemExit):
        kernels.main([option, value])
    assert message in capsys.readouterr().err


def _process(pid, name):
    return {"ph": "M", "name": "process_name", "pid": pid, "args": {"name": name}}


def _event(pid, name, micros, **args):
    return {"ph": "X", "pid": pid, "tid": 1, "name": name, "dur": micros, "args": args}


def test_kernel_times_are_the_device_events_per_call():
    events = [_process(1, "/host:CPU"), _process(2, "/device:GPU:0"),
              _event(1, "PjitFunction(log_prob)", 900.0), _event(2, "gemm_fusion", 30.0),
              _event(2, "gemm_fusion", 50.0), _event(2, "memcpy32_post", 4.0)]
    assert kernels.kernel_times(events, calls=2) == {"gemm_fusion": (40.0, 1.0), "memcpy32_post": (2.0, 0.5)}


def test_without_a_device_kernels_are_the_runtime_events_of_a_module():
    events = [_process(1, "/host:CPU"), _event(1, "while.11", 100.0, hlo_module="jit_log_prob"),
              _event(1, "add_fusion", 30.0, hlo_module="jit_log_prob"), _event(1, "ThunkExecutor::Execute", 99.0)]
    assert kernels.kernel_times(events, calls=1) == {"add_fusion": (30.0, 1.0)}


def test_kernel_profile_of_a_small_flow(tmp_path, monkeypatch):
    monkeypatch.setitem(run.MODELS, "planar", {"layers": 2, "hidden": ()})
    out = tmp_path / "kernels.json"
    kernels.main(["--models", "planar", "--compare", "", "--measures", "log_prob,train", "--dim", "3",
                  "--train-batch", "4", "--eval-batch", "8", "--calls", "1", "--top", "2", "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [(row["library"], row["measure"]) for row in rows] == [("jaxflow", "log_prob"), ("jaxflow", "train")]
    for row in rows:
        assert row["kernels"] > 0 and 0 < row["kernel_us"] and row["wall_us"] > 0
        assert 0 < len(row["top"]) <= 2 and row["top"][0]["us"] >= row["top"][-1]["us"]


def test_digits_summary_averages_the_seeds():
    fits = [(3.0, -60.0, 2.30), (1.0, -58.0, 2.28), (2.0, -59.5, 2.31)]
    row = digits.summary_row("maf", "jaxflow", fits)
    log_liks = [-60.0, -58.0, -59.5]
    assert row["seeds"] == 3 and row["fit_s"] == 2.0
    assert math.isclose(row["test_log_lik_mean"], sum(log_liks) / 3)
    squared_deviations = sum((v - sum(log_liks) / 3) ** 2 for v in log_liks)
    assert math.isclose(row["test_log_lik_se"], math.sqrt(squared_deviations / 2 / 3))
    assert row["test_log_lik_per_seed"] == log_liks
    assert row["test_log_lik"].startswith("-59.17 ± ")
    assert digits.summary_row("maf", "jaxflow", fits[:1])["test_log_lik_se"] == 0.0


@pytest.mark.parametrize("transposed", [False, True])
def test_dense_layout_times_the_weight_gradient_in_either_layout(transposed):
    h, g = jax.random.normal(jax.random.key(0), (5, 3)), jax.random.normal(jax.random.key(1), (5, 2))
    weights = jnp.zeros((2, 3) if transposed else (3, 2))
    expected = (h.T @ g).T if transposed else h.T @ g
    np.testing.assert_allclose(dense_layout.weight_gradient(transposed)(weights, h, g), expected, rtol=1e-5)


def test_dense_layout_reports_both_layouts_and_the_one_dense_stores(tmp_path):
    dense_layout.main(["--batches", "4", "--shapes", "8x2,2x8", "--repeats", "1", "--out", str(tmp_path / "d.json")])
    rows = json.loads((tmp_path / "d.json").read_text())["rows"]
    assert [(row["in"], row["out"], row["Dense stores"]) for row in rows] == [(8, 2, "(out, in)"), (2, 8, "(in, out)")]
    assert all(row["(in, out) us"] > 0 and row["(out, in) us"] > 0 for row in rows)
