"""The benchmark's matrix-product FLOP counter (benchmarks/flops.py) against hand counts."""

import jax
import jax.numpy as jnp

from benchmarks.flops import matmul_flops
from jaxflow import flows


def test_a_matrix_product_costs_two_flops_per_multiply_add():
    a, b = jnp.ones((3, 4)), jnp.ones((4, 5))
    assert matmul_flops(jnp.matmul, a, b) == 2 * 3 * 4 * 5
    batched = jnp.ones((6, 3, 4)), jnp.ones((6, 4, 5))
    assert matmul_flops(jnp.matmul, *batched) == 6 * 2 * 3 * 4 * 5


def test_a_scan_counts_its_body_once_per_iteration():
    a, b = jnp.ones((3, 4)), jnp.ones((4, 5))

    def repeated(a, b):
        return jax.lax.scan(lambda carry, _: (carry @ b[:, :4], None), a, None, length=7)[0]

    assert matmul_flops(repeated, a, b) == 7 * 2 * 3 * 4 * 4


def test_a_convolution_counts_output_elements_times_kernel_window():
    image, kernel = jnp.ones((2, 8, 8, 3)), jnp.ones((3, 3, 3, 16))

    def conv(image, kernel):
        return jax.lax.conv_general_dilated(image, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))

    assert matmul_flops(conv, image, kernel) == 2 * (2 * 6 * 6 * 16) * (3 * 3 * 3)


def test_a_cond_counts_its_most_expensive_branch():
    a = jnp.ones((4, 4))
    cheap_or_dear = lambda flag, a: jax.lax.cond(flag, lambda a: a, lambda a: a @ a @ a, a)  # noqa: E731
    assert matmul_flops(cheap_or_dear, True, a) == 2 * (2 * 4 * 4 * 4)


def test_looped_and_unrolled_flows_count_the_same_work():
    x = jnp.ones((32, 6))
    counts = []
    for unroll in (1, True):
        flow = flows.realnvp(6, layers=3, hidden=(8,), unroll=unroll)
        counts.append(matmul_flops(flow.log_prob, flow.init(jax.random.key(0)), x))
    # 3 layers, each an MLP 3 -> 8 -> 6 (shift and scale of 3 entries), on 32 events
    assert counts == [3 * 2 * 32 * (3 * 8 + 8 * 6)] * 2
