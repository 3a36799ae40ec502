"""The `jaxflow` command line, run as a user runs it: the real entry point in a subprocess, on files.

One module-scoped run is fitted, killed after its first checkpoint and resumed;
the other tests sample, score and plot it. Bad inputs run in parallel subprocesses.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

CLI = [sys.executable, "-m", "jaxflow.cli"]
TINY_FLOW = ["--flow", "maf", "--layers", "1", "--hidden", "4", "--batch-size", "64"]
EVERY_20_STEPS = ["--eval-every", "20", "--checkpoint-every", "20"]
# float32 holds neither a's spread about its mean nor b's sd; the log-det of standardising is about 105, not 0
MEAN, SD = np.array([1e7, -5e-46]), np.array([0.5, 4e-46])
TIMEOUT_S = 300


def run(*args, command=CLI):
    return subprocess.run([*command, *map(str, args)], capture_output=True, text=True, timeout=TIMEOUT_S)


def checkpoint_steps(folder_pattern, parent):
    """Steps of the complete checkpoints (orbax renames a step's folder to its number once written)."""
    return [int(p.name) for p in parent.glob(f"{folder_pattern}/checkpoints/*") if p.name.isdigit()]


def write_csv(path, header, rows):
    path.write_text("".join(line + "\n" for line in ([header] if header else []) + rows))
    return path


def assert_one_line_error(expected, returncode, stderr):
    assert returncode == 2, (expected, stderr)
    assert stderr.startswith("jaxflow: error: ") and stderr.count("\n") == 1, stderr
    assert expected in stderr and "Traceback" not in stderr, (expected, stderr)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """data.csv: columns "a, in m" (a name holding a comma), label (text), b; (a, b) ~ N(MEAN, SD^2), 500 rows."""
    values = np.random.default_rng(0).normal(MEAN, SD, size=(500, 2))
    rows = [f"{a:.17g},cat,{b:.17g}" for a, b in values]
    return write_csv(tmp_path_factory.mktemp("data") / "data.csv", '"a, in m",label,b', rows), values


@pytest.fixture(scope="module")
def resumed(data, tmp_path_factory):
    """A fit killed after its first checkpoint, then resumed by the same command with a budget of 40 more steps."""
    out = tmp_path_factory.mktemp("runs") / "run"
    fit = ["fit", data[0], "--columns", "0,2", *TINY_FLOW, *EVERY_20_STEPS, "--out", out, "--no-progress"]
    killed = subprocess.Popen([*CLI, *map(str, fit), "--steps", "1000000"], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while not checkpoint_steps("run.tmp-*", out.parent) and killed.poll() is None:
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.05)
    finally:
        killed.kill()
        stderr = killed.communicate()[1].decode()
    assert "Traceback" not in stderr and killed.returncode < 0, stderr
    killed_at = max(checkpoint_steps("run.tmp-*", out.parent))
    resume = run(*fit, "--steps", killed_at + 40)
    return out, fit, killed_at, resume


def test_resume_continues_from_the_checkpoint_of_a_killed_fit(resumed):
    out, _, killed_at, resume = resumed
    assert resume.returncode == 0, resume.stderr
    assert killed_at >= 20 and f"resuming {out} from step {killed_at} of {killed_at + 40}" in resume.stderr
    history = json.loads((out / "history.json").read_text())
    assert history["num_steps"] == len(history["loss"]) == killed_at + 40
    assert history["validation_step"] == list(range(20, killed_at + 41, 20))
    assert max(checkpoint_steps(".", out)) == killed_at + 40
    assert not list(out.parent.glob("run.*")), "a temporary run folder was left behind"
    config = json.loads((out / "config.json").read_text())
    assert config["columns"] == {"names": ["a, in m", "b"], "indices": [0, 2], "file_width": 3}
    assert config["flow"] == "maf" and config["flow_options"]["hidden"] == [4]


def test_the_same_fit_again_reports_complete_and_changes_nothing(resumed):
    out, fit, killed_at, _ = resumed
    params = (out / "params.npz").read_bytes()
    again = run(*fit, "--steps", killed_at + 40)
    assert again.returncode == 0, again.stderr
    assert "already complete" in again.stderr
    assert (out / "params.npz").read_bytes() == params


def test_sample_matches_the_data_moments(resumed, tmp_path):
    out = resumed[0]
    result = run("sample", out, "-n", 4000, "-o", tmp_path / "samples.csv", "--seed", 1)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "samples.csv").read_text().splitlines()[0] == '"a, in m",b'
    samples = np.loadtxt(tmp_path / "samples.csv", delimiter=",", skiprows=1)
    assert samples.shape == (4000, 2) and np.isfinite(samples).all()
    assert len(np.unique(samples[:, 0])) > 3900, "samples rounded near 1e7 (float32 holds a few values in a's range)"
    np.testing.assert_allclose((samples.mean(0) - MEAN) / SD, 0, atol=0.15)
    np.testing.assert_allclose(samples.std(0), SD, rtol=0.1)


def test_log_prob_is_in_data_units(resumed, data, tmp_path):
    """A barely trained flow is the Gaussian fitted to the data: compare with scipy's log density in data units."""
    path, values = data
    result = run("log-prob", resumed[0], path, "-o", tmp_path / "log_prob.npy")
    assert result.returncode == 0, result.stderr
    log_prob = np.load(tmp_path / "log_prob.npy", allow_pickle=False)
    assert log_prob.shape == (500,) and np.isfinite(log_prob).all()
    assert len(np.unique(log_prob)) == 500, "rows rounded to float32 before standardising"
    gaussian = stats.norm.logpdf(values, values.mean(0), values.std(0)).sum(1)
    assert abs(log_prob.mean() - gaussian.mean()) < 0.05
    assert np.corrcoef(log_prob, gaussian)[0, 1] > 0.98


def test_plot_writes_a_png(resumed, data, tmp_path):
    np.savetxt(tmp_path / "data.txt", data[1])  # whitespace-separated, no header: the run's columns, by count
    result = run("plot", resumed[0], "--data", tmp_path / "data.txt", "-o", tmp_path / "pairs.png", "--samples", 500)
    assert result.returncode == 0, result.stderr
    image = (tmp_path / "pairs.png").read_bytes()
    assert image.startswith(b"\x89PNG") and len(image) > 10_000


def test_fit_summary_counts_skipped_steps():
    from jaxflow.cli import _fit_summary

    history = {"num_steps": 20, "skipped": [False] * 2 + [True] * 18, "best_validation_loss": 1.5, "best_step": 10}
    assert _fit_summary(history) == (
        "20 steps, 18 of them skipped for a non-finite loss or gradient, a lower --lr may help, "
        "best validation loss 1.5000 at step 10"
    )
    assert _fit_summary({**history, "skipped": [False] * 20}) == "20 steps, best validation loss 1.5000 at step 10"


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "jaxflow"
    assert script.exists(), f"no console script next to {sys.executable}: install the package (make install)"
    result = run("--version", command=[str(script)])
    assert result.returncode == 0 and result.stdout.startswith("jaxflow "), result.stderr


def test_bad_input_gives_one_line_errors(resumed, data, tmp_path):
    good = data[0]
    bad_cell = write_csv(tmp_path / "bad_cell.csv", "a,b", ["1,2", "3,4", "5,oops", "7,8"])
    nan_rows = write_csv(tmp_path / "nan.csv", None, ["1,2", "nan,4", "5,6", "7,inf"])
    four_columns = write_csv(tmp_path / "four.csv", None, ["1,2,3,4", "5,6,7,8"])
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "not_a_run").mkdir()
    out = ["--out", tmp_path / "never"]
    log_prob, sample = ["log-prob", resumed[0]], ["sample", tmp_path / "not_a_run", "-n", 5]
    cases = {
        "no column named 'zz'; the columns are: a, in m, label, b": ["fit", good, "--columns", "b,zz", *out],
        "bad_cell.csv, line 4, column 'b': 'oops', which is not a number": ["fit", bad_cell, *out],
        "2 of 4 rows contain NaN or inf (the first is line 2)": ["fit", nan_rows, *out],
        "empty.csv is empty": ["fit", tmp_path / "empty.csv", *out],
        "missing.csv: no such file": ["fit", tmp_path / "missing.csv", *out],
        "the file has 4 columns, but the run was fit on 2": [*log_prob, four_columns, "-o", tmp_path / "x.npy"],
        "not_a_run is not a jaxflow run directory": [*sample, "-o", tmp_path / "s.csv"],
        "--bins does not apply to --flow maf": ["fit", good, "--flow", "maf", "--bins", 4, *out],
        "the following arguments are required: --out": ["fit", good],
    }
    processes = {
        expected: subprocess.Popen([*CLI, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for expected, args in cases.items()
    }
    for expected, process in processes.items():
        _, stderr = process.communicate(timeout=TIMEOUT_S)
        assert_one_line_error(expected, process.returncode, stderr)
    assert not (tmp_path / "never").exists() and not list(tmp_path.glob("never.*"))


def test_bad_numbers_and_header_names_give_one_line_errors(resumed, data, tmp_path, capsys):
    """More bad input, run in this process: each case ends before any fitting, and a subprocess costs seconds."""
    from jaxflow import _cli_run as runs
    from jaxflow.cli import main

    twice_x = write_csv(tmp_path / "twice_x.csv", "x,x", ["1,2", "3,4", "5,7"])
    empty_name = write_csv(tmp_path / "empty_name.csv", ",y", ["1,2", "3,4", "5,7"])
    twice_b = write_csv(tmp_path / "twice_b.csv", '"a, in m",b,b', ["1,2,3", "4,5,6"])
    out = ["--out", tmp_path / "never"]
    (empty_npy := tmp_path / "empty.npy").write_bytes(b"")
    with open(archive := tmp_path / "archive.npy", "wb") as file:  # a path would gain the suffix .npz
        np.savez(file, x=np.ones((3, 2)))
    huge = write_csv(tmp_path / "huge.csv", "x,y", ["1.7e308,1", "-1.7e308,2", "-1.7e308,3"])
    # One held-out row (the split's first, --seed 0) at 1e39: it failed inside the fit as "cannot resume".
    outlier_rows = np.random.default_rng(1).normal(size=(40, 2))
    outlier_rows[np.random.default_rng(0).permutation(40)[0], 0] = 1e39
    held_out_outlier = write_csv(tmp_path / "held_out.csv", "p,q", [f"{a},{b}" for a, b in outlier_rows])
    earlier, second = tmp_path / "earlier_run", tmp_path / "second_run"  # run directories of formats 1 and 2
    swapped = tmp_path / "swapped_run"  # fit on both columns of a headerless file, taken as --columns 1,0
    for directory, changes in [
        (earlier, {"format": "jaxflow-run"}), (second, {"format": "jaxflow-run-2"}),
        (swapped, {"columns": {"names": None, "indices": [1, 0], "file_width": 2}}),
    ]:
        shutil.copytree(resumed[0], directory)
        config = json.loads((directory / "config.json").read_text())
        (directory / "config.json").write_text(json.dumps(config | changes))
    dead_pid = next(pid for pid in range(4_000_000, 4_100_000) if not runs._is_running(pid))
    short_fit = [*resumed[1][:-3], "--out", tmp_path / "short", "--steps", 5, "--no-progress"]  # the same, 5 steps
    shutil.copytree(resumed[0], tmp_path / f"short.tmp-{dead_pid}")  # a killed fit of it, beyond 5 steps
    last_step = max(checkpoint_steps(resumed[0].name, resumed[0].parent))
    own = tmp_path / f"mine.tmp-{os.getpid()}"  # a killed fit of another run under this process's id (pids repeat)
    shutil.copytree(resumed[0], own)
    config = json.loads((own / "config.json").read_text())
    (own / "config.json").write_text(json.dumps(config | {"training": config["training"] | {"seed": 7}}))
    mine_fit = [*resumed[1][:-3], "--out", tmp_path / "mine", "--steps", 5, "--no-progress"]
    cases = {
        "was written by an earlier jaxflow (run format 'jaxflow-run'": [
            "sample", earlier, "-n", 5, "-o", tmp_path / "s.npy"
        ],
        "was written by an earlier jaxflow (run format 'jaxflow-run-2', this one reads 'jaxflow-run-3')": [
            "sample", second, "-n", 5, "-o", tmp_path / "s2.npy"
        ],
        "twice_x.csv: header name 'x' is used by more than one column": ["fit", twice_x, *out],
        "empty_name.csv: an empty header name": ["fit", empty_name, *out],
        "twice_b.csv: header name 'b' is used by more than one column": [
            "log-prob", resumed[0], twice_b, "-o", tmp_path / "x.npy"
        ],
        "--lr: expected a positive, finite float, got 'inf'": ["fit", data[0], "--lr", "inf", *out],
        "--lr: expected a positive, finite float, got '1e400'": ["fit", data[0], "--lr", "1e400", *out],
        "--seed: expected an integer from 0 to 4294967295, got '-1'": ["fit", data[0], "--seed", -1, *out],
        "--seed: expected an integer from 0 to 4294967295, got '4294967296'": [
            "plot", resumed[0], "-o", tmp_path / "p.png", "--seed", 2**32
        ],
        "empty.npy: not a readable numeric .npy file": ["fit", empty_npy, *out],
        "archive.npy: an .npz archive, not an .npy array": ["fit", archive, *out],
        "column 'x' spans more standard deviations than float32 holds": ["fit", huge, *out],
        "column 'p' spans more standard deviations than float32 holds": ["fit", held_out_outlier, *out],
        "invalid choice: 'glow'": ["fit", data[0], "--flow", "glow", *out],
        "--validation 0.001 holds out none of the 500 rows": [
            "fit", data[0], "--columns", "0,2", "--validation", 0.001, "--patience", 2, *out
        ],
        "--columns b, 2 name the same column; choose each column once": ["fit", data[0], "--columns", "b,2", *out],
        f"short.tmp-{dead_pid} holds this run at step {last_step}, beyond --steps 5: give --steps": short_fit,
        f"mine.tmp-{os.getpid()} holds a killed fit of another run (another config)": mine_fit,  # was deleted
        "data.csv/run: cannot create the run's folder (Not a directory)": [
            "fit", data[0], "--columns", "0,2", "--steps", 5, "--out", data[0] / "run"
        ],
    }
    for expected, args in cases.items():
        returncode = main(list(map(str, args)))
        assert_one_line_error(expected, returncode, capsys.readouterr().err)
    assert not list(tmp_path.glob("never*")) and sorted(tmp_path.glob("*.npy")) == [archive, empty_npy]
    assert json.loads((own / "config.json").read_text())["training"]["seed"] == 7 and (own / "checkpoints").is_dir()

    # The swapped run took all the columns of its file: a headerless file that wide is read in that file's layout
    # (it was read in the run's order: the training file itself scored -86 nats per row instead of -2.7), as its
    # column labels name them, and its samples come out in that layout, headed by those labels in a .csv.
    headerless = write_csv(tmp_path / "headerless.csv", None, ["1,2", "3,-4"])
    headed = write_csv(tmp_path / "headed.csv", "column 1,column 0", ["2,1", "-4,3"])
    for path in (headerless, headed):
        assert main(list(map(str, ["log-prob", swapped, path, "-o", path.with_suffix(".scored.npy")]))) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "headerless.scored.npy"), np.load(tmp_path / "headed.scored.npy"))
    for drawn in ("drawn.csv", "drawn.npy"):
        assert main(list(map(str, ["sample", swapped, "-n", 5, "--seed", 3, "-o", tmp_path / drawn]))) == 0
        assert main(list(map(str, ["log-prob", swapped, tmp_path / drawn, "-o", tmp_path / f"{drawn}.npy"]))) == 0
    assert (tmp_path / "drawn.csv").read_text().startswith("column 0,column 1\n")
    np.testing.assert_allclose(np.load(tmp_path / "drawn.csv.npy"), np.load(tmp_path / "drawn.npy.npy"), rtol=1e-6)


def test_flows_without_permutations_fit_and_far_rows_score_minus_infinity(resumed, tmp_path, capsys):
    from jaxflow.cli import main

    rows = write_csv(tmp_path / "rows.csv", "x,y", [f"{np.sin(i)},{np.cos(3 * i)}" for i in range(64)])
    for flow in ("planar_flow", "residual_flow"):  # builders without a seed: none was passed to them
        args = ["fit", rows, "--flow", flow, "--layers", 1, "--steps", 2, "--out", tmp_path / flow, "--no-progress"]
        assert main(list(map(str, args))) == 0, capsys.readouterr().err
    far = write_csv(tmp_path / "far.csv", '"a, in m",b', ["1e45,-5e-46", f"{MEAN[0]},{MEAN[1]}"])
    assert main(list(map(str, ["log-prob", resumed[0], far, "-o", tmp_path / "far.npy"]))) == 0
    log_prob = np.load(tmp_path / "far.npy")
    assert log_prob[0] == -np.inf and np.isfinite(log_prob[1])  # was NaN: 2e45 sds overflowed float32


def test_actnorm_option_adds_actnorms_where_the_flow_takes_them(tmp_path, capsys):
    from jaxflow.cli import main

    rows = write_csv(tmp_path / "rows.csv", "x,y", [f"{np.sin(i)},{np.cos(3 * i)}" for i in range(64)])
    leaves = {}
    for option in ("--actnorm", "--no-actnorm"):
        args = ["fit", rows, "--flow", "realnvp", "--layers", 2, "--hidden", 4, option, "--steps", 2,
                "--out", tmp_path / option, "--no-progress"]
        assert main(list(map(str, args))) == 0, capsys.readouterr().err
        config = json.loads((tmp_path / option / "config.json").read_text())
        assert config["flow_options"]["actnorm"] == (option == "--actnorm")
        leaves[option] = len(np.load(tmp_path / option / "params.npz").files)
    assert leaves["--actnorm"] == leaves["--no-actnorm"] + 2  # a shift and a log-scale, stacked over the layers
    args = ["fit", rows, "--flow", "planar_flow", "--actnorm", "--out", tmp_path / "never"]
    assert_one_line_error("--actnorm does not apply to --flow planar_flow", main(list(map(str, args))),
                          capsys.readouterr().err)


def test_whole_number_columns_are_warned_of(tmp_path, capsys):
    from jaxflow.cli import main

    rows = write_csv(tmp_path / "rows.csv", "count,x", [f"{i % 7},{np.sin(i)}" for i in range(64)])
    args = ["fit", rows, "--flow", "planar_flow", "--layers", 1, "--steps", 2, "--out", tmp_path / "run",
            "--no-progress"]
    assert main(list(map(str, args))) == 0
    assert "warning: only whole numbers in count;" in capsys.readouterr().err
    continuous = write_csv(tmp_path / "continuous.csv", "a,x", [f"{i / 7},{np.sin(i)}" for i in range(64)])
    args[1], args[-2] = continuous, tmp_path / "continuous_run"
    assert main(list(map(str, args))) == 0
    assert "whole numbers" not in capsys.readouterr().err


def test_standardisation_holds_columns_of_any_magnitude_and_leftovers_of_any_name(tmp_path):
    from jaxflow import _cli_run as runs

    values = np.random.default_rng(1).normal(size=(100, 2)) * np.array([1e160, 1e-170])  # squares over/underflow
    mean, sd = runs.standardisation(values)
    unit = values / [1e160, 1e-170]
    np.testing.assert_allclose(mean / [1e160, 1e-170], unit.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(sd / [1e160, 1e-170], unit.std(axis=0), rtol=1e-12)
    dead_pid = next(pid for pid in range(4_000_000, 4_100_000) if not runs._is_running(pid))
    (tmp_path / f"r[1].tmp-{dead_pid}").mkdir()  # glob characters in the run's name
    assert runs._leftovers(tmp_path / "r[1]") == [tmp_path / f"r[1].tmp-{dead_pid}"]


def test_a_txt_table_reads_the_header_np_savetxt_writes(tmp_path):
    from jaxflow._cli_io import columns_from_option, read_table

    values = np.arange(6.0).reshape(3, 2)
    np.savetxt(tmp_path / "t.txt", values, header="x y")  # "# x y": the "#" was read as a third column
    table = read_table(tmp_path / "t.txt", columns_from_option("y"))
    assert table.names == ["y"] and table.width == 2
    np.testing.assert_array_equal(table.values, values[:, 1:])


def test_a_failed_write_leaves_no_temporary_file(tmp_path):
    from jaxflow._cli_io import CliError, atomic_write

    def write(file):  # as matplotlib does for .pgf without LaTeX
        file.write(b"partial")
        raise RuntimeError("'xelatex' not found")

    with pytest.raises(CliError, match=r"figure.pgf: cannot write \('xelatex' not found\)"):
        atomic_write(tmp_path / "figure.pgf", write)
    assert list(tmp_path.iterdir()) == []


def test_header_option_overrides_the_guess(tmp_path, capsys):
    """A header of numbers ("2019,2020") is read as data unless --header yes says otherwise, and back."""
    from jaxflow._cli_io import CliError, columns_from_option, read_table
    from jaxflow.cli import main

    years = write_csv(tmp_path / "years.csv", "2019,2020", ["1,2", "3,4.5", "2,2"])
    guessed = read_table(years, columns_from_option(None))
    assert guessed.names is None and guessed.values[:, 1].tolist() == [2020, 2, 4.5, 2]
    with pytest.raises(CliError, match=r"give 0-based column indices \(0 to 1\), or --header yes if its first line"):
        read_table(years, columns_from_option("2020"))
    told = read_table(years, columns_from_option("2020"), True)
    assert told.names == ["2020"] and told.values[:, 0].tolist() == [2, 4.5, 2]
    headerless = write_csv(tmp_path / "headerless.csv", None, ["x,1", "y,2", "z,3"])  # a text id column
    assert read_table(headerless, columns_from_option("1"), False).values[:, 0].tolist() == [1, 2, 3]

    rows = write_csv(tmp_path / "rows.csv", "2019,2020", [f"{np.sin(i)},{np.cos(3 * i)}" for i in range(64)])
    fit = ["fit", rows, "--header", "yes", "--flow", "planar_flow", "--layers", 1, "--steps", 2, "--no-progress"]
    assert main(list(map(str, [*fit, "--out", tmp_path / "run"]))) == 0, capsys.readouterr().err
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["columns"]["names"] == ["2019", "2020"]
    scored = ["log-prob", tmp_path / "run", rows, "-o", tmp_path / "scored.npy"]
    assert main(list(map(str, [*scored, "--header", "yes"]))) == 0
    assert np.load(tmp_path / "scored.npy").shape == (64,)
    np.save(tmp_path / "rows.npy", np.ones((4, 2)))
    cases = {
        "rows.npy: a .npy file has no header line; drop --header": [
            "log-prob", tmp_path / "run", tmp_path / "rows.npy", "-o", tmp_path / "x.npy", "--header", "no"
        ],
        "--header describes the --data file: give --data, or drop --header": [
            "plot", tmp_path / "run", "-o", tmp_path / "p.png", "--header", "yes"
        ],
        "invalid choice: 'maybe'": [*fit, "--out", tmp_path / "never", "--header", "maybe"],
    }
    for expected, args in cases.items():
        assert_one_line_error(expected, main(list(map(str, args))), capsys.readouterr().err)
