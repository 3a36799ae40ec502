"""Precision passes: each pytest process runs in one JAX precision mode and never toggles it.

`make test` runs the suite twice: once as is (float32), then with `JAX_ENABLE_X64=1`, which
selects only the tests that need float64: those marked `float64` and the float64 half of the
`dtype` fixture. Switching `jax_enable_x64` inside a long-lived process invalidates JAX's caches
under live objects; it crashed XLA workers, so no test does it.

Tests compile with LLVM's optimisations off and, where the jaxlib still has it, with XLA's
classic CPU code generator instead of its newer fusion emitters: on their tiny shapes
compilation is most of the cost (measured: the flow-builder contract tests take half the time;
the classic generator compiles the heavy kit cases in 0.69x the time), and neither changes what
is computed. Benchmarks and users run with XLA's defaults.

Matrix products run at full float32 precision: on GPUs JAX's default is TF32 (about three
decimal digits), which would blur the round-trip and reference comparisons; on CPUs it changes
nothing. Users choose their own precision (see the README).
"""

import os
import subprocess
import sys

_FAST_COMPILE = (
    "--xla_backend_optimization_level=0",
    "--xla_llvm_disable_expensive_passes=true",
    "--xla_cpu_use_fusion_emitters=false",
)


def _flags_xla_knows(flags):
    """The flags this jaxlib's XLA accepts, each probed in a subprocess.

    XLA aborts the whole process on a flag it does not know, and newer jaxlibs dropped the
    classic CPU code generator with its flag (seen on jaxlib 0.11: every test worker died).
    """
    def accepted(candidates):
        probe_env = {**os.environ, "XLA_FLAGS": " ".join(candidates), "JAX_PLATFORMS": "cpu"}
        probe = [sys.executable, "-c", "import jax; jax.devices()"]
        return subprocess.run(probe, env=probe_env, capture_output=True).returncode == 0

    return flags if accepted(flags) else [flag for flag in flags if accepted([flag])]


if "JAXFLOW_TEST_XLA_FLAGS" not in os.environ:  # probed once per run: xdist workers inherit both
    os.environ["JAXFLOW_TEST_XLA_FLAGS"] = " ".join(_flags_xla_knows(_FAST_COMPILE))
    os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""), os.environ["JAXFLOW_TEST_XLA_FLAGS"]]).strip()

import jax  # noqa: E402  (XLA reads its flags when the first backend starts)
import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "default", max_examples=4, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck)
)
settings.register_profile("slow", max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
settings.load_profile("default")

X64 = bool(jax.config.jax_enable_x64)
jax.config.update("jax_default_matmul_precision", "highest")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "float64: needs jax_enable_x64; runs only in the JAX_ENABLE_X64=1 pass of `make test`"
    )


def _needs_x64(item):
    dtype = getattr(item, "callspec", None) and item.callspec.params.get("dtype")
    return item.get_closest_marker("float64") is not None or dtype == "float64"


def pytest_collection_modifyitems(config, items):
    """Keeps the tests of this process's precision pass."""
    selected = [item for item in items if _needs_x64(item) == X64]
    deselected = [item for item in items if _needs_x64(item) != X64]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = selected


@pytest.fixture(params=["float32", "float64"])
def dtype(request):
    """The float dtype name a test runs in; its float64 half runs in the float64 pass."""
    return request.param


@pytest.fixture
def load_example():
    """Imports `examples/<name>.py` as a module: the examples are scripts, not a package."""
    import importlib.util
    from pathlib import Path

    def load(name):
        path = Path(__file__).resolve().parents[1] / "examples" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(f"example_{name}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
