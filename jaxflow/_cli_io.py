"""Files of the `jaxflow` command line: numeric tables (CSV/NPY) read with clear errors, results, figures.

A text table is comma-separated (.csv), tab-separated (.tsv), or either comma- or
whitespace-separated (.txt, as `np.savetxt` writes by default): whitespace when its
first non-blank line has no comma. It may have a header row: unless told (`header=True` or
False, the command line's `--header yes|no`), it has one when no cell of its first non-blank
line is a number (in a .txt, after the "#" `np.savetxt` writes before a header). Columns are
chosen by a `ColumnChooser`, `(header or None, width) -> (indices, names or None)`, so that
only the chosen columns need to be numeric (an id or label column may stay text).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

ColumnChooser = Callable[["list[str] | None", int], "tuple[list[int], list[str] | None]"]


class CliError(Exception):
    """Bad input to the command line, reported as one line on stderr (no traceback)."""


class Table(NamedTuple):
    """The chosen columns of a data file.

    Attributes:
      values: (rows, columns) float64.
      names: header names of the chosen columns; None when the file has no header.
      indices: positions of the chosen columns in the file.
      width: number of columns in the file.
    """

    values: np.ndarray
    names: list[str] | None
    indices: list[int]
    width: int


def read_table(path, choose: ColumnChooser, header: bool | None = None) -> Table:
    """Reads the columns `choose` picks from a .csv/.tsv/.txt or .npy file; every chosen cell a finite number.

    `header` says whether a text table's first non-blank line names its columns; None guesses
    (see the module docstring).
    """
    path = Path(path)
    if not path.is_file():
        raise CliError(f"{path}: no such file" if not path.exists() else f"{path} is not a file")
    if path.suffix.lower() == ".npy":
        if header is not None:
            raise CliError(f"{path}: a .npy file has no header line; drop --header")
        return _read_npy(path, choose)
    if path.suffix.lower() in (".csv", ".tsv", ".txt"):
        return _read_text(path, choose, header)
    raise CliError(f"{path}: unsupported file type {path.suffix!r}; give a .csv, .tsv, .txt or .npy file")


def columns_from_option(spec: str | None) -> ColumnChooser:
    """The chooser for `--columns a,b,c`: header names, or 0-based indices; None takes every column."""
    tokens = None if spec is None else [token.strip() for token in spec.split(",")]
    if tokens is not None and (not all(tokens) or len(set(tokens)) != len(tokens)):
        raise CliError(f"--columns {spec!r}: expected distinct, comma-separated names or indices, e.g. --columns x,y")

    def choose(header, width):
        indices = list(range(width)) if tokens is None else _column_indices(tokens, header, width)
        if header is None:
            return indices, None
        names = [header[i] for i in indices]
        _check_findable(names, header)
        return indices, names

    return choose


def column_labels(names: list[str] | None, indices: list[int]) -> list[str]:
    """A run's column names, or "column i" for each chosen index when its file had no header."""
    return names or [f"column {i}" for i in indices]


def columns_like(names: list[str] | None, indices: list[int], width: int) -> ColumnChooser:
    """The chooser that finds the columns a run was fit on: by header name (a run fit on a file without a header:
    its `column_labels`, as `sample` writes them), else by count: as many columns as the training file is its layout,
    as many as the run took is those columns in the run's order."""
    described = ", ".join(names) if names else f"columns {indices}"
    labels = column_labels(names, indices)

    def choose(header, file_width):
        if header is not None and (names is not None or set(labels) <= set(header)):
            return _named_columns(labels, header), names
        if file_width == width:
            return list(indices), None if header is None else [header[i] for i in indices]
        if file_width == len(indices):
            return list(range(file_width)), header
        raise CliError(
            f"the file has {file_width} columns, but the run was fit on {len(indices)} ({described}) taken from a file "
            f"with {width}: give exactly those {len(indices)} columns, a file laid out like the training file, or a "
            "header naming them"
        )

    return choose


def in_file_order(values: np.ndarray, labels: list[str], indices: list[int], width: int):
    """(values, labels) with the columns in the training file's order when the run took all of its columns (the
    layout `columns_like` reads a file of that width in); else as they are, in the run's order."""
    if len(indices) != width:
        return values, labels
    order = np.argsort(indices)
    return values[:, order], [labels[k] for k in order]


def checked_output(path, formats: Sequence[str] = ("csv", "npy")) -> Path:
    """`path`, after checking that its folder exists and that it ends in one of `formats`."""
    path = Path(path)
    if path.suffix.lower().lstrip(".") not in formats:
        raise CliError(f"{path}: the output must end in .{', .'.join(formats)}")
    if not path.parent.is_dir():
        raise CliError(f"{path}: the folder {path.parent} does not exist")
    return path


def write_table(path, values: np.ndarray, names: Sequence[str] | None) -> None:
    """Writes a (rows, columns) array as .npy, or as .csv with `names` as header (none if None); atomically."""
    path = checked_output(path)
    if path.suffix.lower() == ".npy":
        atomic_write(path, lambda f: np.save(f, values))
    else:
        header = _csv_line(names or ())
        # "%s": the shortest text that reads back as the same float32 or float64 (values are never rounded)
        atomic_write(path, lambda f: np.savetxt(f, values, fmt="%s", delimiter=",", header=header, comments=""))


def _csv_line(cells: Sequence[str]) -> str:
    """One CSV line without its line end; a cell holding a comma is quoted."""
    line = io.StringIO()
    csv.writer(line, lineterminator="").writerow(cells)
    return line.getvalue()


def atomic_write(path, write: Callable) -> None:
    """Calls `write(binary_file)` on a temporary file next to `path`, then renames it to `path`."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(partial, "wb") as f:
            write(f)
        os.replace(partial, path)
    except (OSError, RuntimeError) as error:  # RuntimeError: a figure format whose tool is missing (pgf: LaTeX)
        raise CliError(f"{path}: cannot write ({getattr(error, 'strerror', None) or error})") from None
    finally:
        partial.unlink(missing_ok=True)


def pairs_figure(samples: np.ndarray, data: np.ndarray | None, labels: Sequence[str], seed: int):
    """A matplotlib Figure of pairwise marginals: histograms on the diagonal, scatter plots below it.

    Args:
      samples: (rows, >= len(labels)) samples; the first len(labels) columns are drawn.
      data: the same for data, drawn beneath the samples (subsampled to as many rows), or None.
      labels: column names.
      seed: seed of the data subsample.
    """
    k = len(labels)
    Figure = _matplotlib_figure()
    figure = Figure(figsize=(2.4 * k + 0.6, 2.4 * k + 0.6), layout="constrained")
    axes = figure.subplots(k, k, squeeze=False)
    sets = [("samples", samples, "tab:orange")]
    if data is not None:
        rows = np.random.default_rng(seed).permutation(len(data))[: len(samples)]
        sets.insert(0, ("data", data[rows], "tab:blue"))
    for i in range(k):
        for j in range(k):
            ax = axes[i, j]
            for name, values, colour in sets:
                if i == j:
                    ax.hist(values[:, i], bins=40, density=True, histtype="step", color=colour, label=name)
                elif i > j:
                    ax.scatter(values[:, j], values[:, i], s=2, alpha=0.3, color=colour, linewidths=0)
            if i < j:
                ax.set_axis_off()
            ax.set_xlabel(labels[j] if i == k - 1 else "")
            ax.set_ylabel(labels[i] if j == 0 and i > 0 else "")
    axes[0, 0].legend(fontsize="small")
    return figure


def image_formats() -> list[str]:
    """The file types `pairs_figure(...).savefig` can write, e.g. ["png", "pdf", "svg", ...]."""
    return list(_matplotlib_figure()().canvas.get_supported_filetypes())


def _matplotlib_figure():
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise CliError("plot needs matplotlib: pip install 'jaxflow[plot]'") from None
    return Figure


def _read_npy(path, choose) -> Table:
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise CliError(f"{path}: not a readable numeric .npy file ({error or 'no data'})") from None
    if not isinstance(array, np.ndarray):  # an .npz archive under an .npy name
        array.close()
        raise CliError(f"{path}: an .npz archive, not an .npy array; save one array with np.save")
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2 or not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise CliError(f"{path}: expected a 1-D or 2-D array of numbers, got {array.dtype} of shape {array.shape}")
    if array.size == 0:
        raise CliError(f"{path} is empty (shape {array.shape})")
    indices, names = _choose(path, choose, None, array.shape[1])
    values = array[:, indices].astype(np.float64)
    _check_finite(path, values, lambda row: f"row {row} (0-based)")
    return Table(values, names, indices, array.shape[1])


def _read_text(path, choose, header: bool | None) -> Table:
    lines, rows = _nonblank_rows(path)
    if not rows:
        raise CliError(f"{path} is empty: no rows")
    if path.suffix.lower() == ".txt" and rows[0][0].startswith("#"):  # np.savetxt(..., header=...) writes "# a b"
        rows[0] = [cell for cell in [rows[0][0].lstrip("#").strip(), *rows[0][1:]] if cell]
    if header is None:
        header = not any(_is_number(cell) for cell in rows[0])
    header = rows[0] if header else None
    if header is not None:
        lines, rows = lines[1:], rows[1:]
        if not rows:
            raise CliError(f"{path} has a header ({','.join(header)}) but no data rows")
    width = len(header if header is not None else rows[0])
    for line, row in zip(lines, rows):
        if len(row) != width:
            raise CliError(f"{path}, line {line}: {len(row)} cells where the first line has {width}")
    indices, names = _choose(path, choose, header, width)
    values = _to_float(path, np.asarray(rows, dtype=str)[:, indices], lines, indices, names)
    _check_finite(path, values, lambda row: f"line {lines[row]}")
    return Table(values, names, indices, width)


def _nonblank_rows(path) -> tuple[list[int], list[list[str]]]:
    """(line numbers, rows of cells) of the non-blank lines, split as the module docstring says."""
    lines, rows = [], []
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            for line, row in _split_lines(f.read(), path.suffix.lower()):
                if any(cell.strip() for cell in row):
                    lines.append(line)
                    rows.append([cell.strip() for cell in row])
    except (UnicodeDecodeError, csv.Error) as error:
        raise CliError(f"{path}: not a readable text table ({error})") from None
    return lines, rows


def _split_lines(text: str, suffix: str):
    """(line number, cells) of each line of a text table: whitespace-separated for a .txt without a comma in its first
    non-blank line, tab-separated for .tsv, else comma-separated."""
    first = next((line for line in text.splitlines() if line.strip()), "")
    if suffix == ".txt" and "," not in first:
        return enumerate((line.split() for line in text.splitlines()), start=1)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t" if suffix == ".tsv" else ",")
    return ((reader.line_num, row) for row in reader)


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _choose(path, choose, header, width):
    try:
        return choose(header, width)
    except CliError as error:
        raise CliError(f"{path}: {error}") from None


def _to_float(path, cells, lines, indices, names) -> np.ndarray:
    """float64 of a 2-D array of strings; else a CliError naming the first cell that is not a number."""
    try:
        return cells.astype(np.float64)
    except ValueError:
        pass
    for row, line in enumerate(lines):
        for position, cell in enumerate(cells[row].tolist()):
            if not _is_number(cell):
                column = repr(names[position]) if names else str(indices[position])
                what = "an empty cell" if not cell else f"{cell!r}, which is not a number"
                raise CliError(f"{path}, line {line}, column {column}: {what}")
    return np.vectorize(float, otypes=[np.float64])(cells)  # numbers Python reads but numpy does not, e.g. 1_000


def _check_finite(path, values, where: Callable[[int], str]) -> None:
    bad = ~np.isfinite(values).all(axis=1)
    if bad.any():
        raise CliError(
            f"{path}: {int(bad.sum())} of {len(values)} rows contain NaN or inf (the first is "
            f"{where(int(np.argmax(bad)))}); remove or impute them"
        )


def _column_indices(tokens: list[str], header, width) -> list[int]:
    """The positions of the columns `tokens` name (header names, else 0-based indices); CliError if one is missing."""
    indices = [_column_index(token, header, width) for token in tokens]
    missing = [token for token, index in zip(tokens, indices) if index is None]
    if missing:
        raise CliError(_missing_columns_message(missing, header, width))
    twice = [token for token, index in zip(tokens, indices) if indices.count(index) > 1]
    if twice:
        raise CliError(f"--columns {', '.join(twice)} name the same column; choose each column once")
    return indices


def _column_index(token: str, header, width) -> int | None:
    if header is not None and token in header:
        return header.index(token)
    if token.isdigit() and int(token) < width:
        return int(token)
    return None


def _named_columns(names: list[str], header: list[str]) -> list[int]:
    """The positions of `names` in `header`; CliError if one is missing or not unique."""
    missing = [name for name in names if name not in header]
    if missing:
        raise CliError(_missing_columns_message(missing, header, len(header)))
    _check_findable(names, header)
    return [header.index(name) for name in names]


def _check_findable(names: list[str], header: list[str]) -> None:
    """CliError unless each of `names` is non-empty and names one column of `header` (runs find columns by name)."""
    for name in names:
        if not name or header.count(name) > 1:
            what = "an empty header name" if not name else f"header name {name!r} is used by more than one column"
            raise CliError(
                f"{what}: the columns a run is fit on need distinct, non-empty names; rename them, or give a file "
                "without a header"
            )


def _missing_columns_message(missing, header, width) -> str:
    listed = ", ".join(repr(token) for token in missing)
    if header is None:
        return (
            f"no column {listed}: the file has no header, so give 0-based column indices (0 to {width - 1}), or "
            "--header yes if its first line names the columns"
        )
    return f"no column named {listed}; the columns are: {', '.join(header)}"
