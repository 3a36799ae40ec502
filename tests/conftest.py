import jax
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "default", max_examples=4, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck)
)
settings.register_profile("slow", max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
settings.load_profile("default")


@pytest.fixture(params=["float32", "float64"])
def dtype(request):
    """Runs a test in float32 and in float64 (jax_enable_x64 on for the test's duration)."""
    with jax.enable_x64(request.param == "float64"):
        yield request.param
