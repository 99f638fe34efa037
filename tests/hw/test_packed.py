"""The packed 8-bit MAC (two products per DSP48E2, WP486): the HLS C++ (both its synthesis
ap_int form and its C-simulation form, compiled by g++ against the ap_types headers) and the
numpy emulation against the two separate integer products."""

from __future__ import annotations

import itertools
import subprocess
from pathlib import Path

import jinja2
import numpy as np
import pytest

from m3c.project import csim
from m3c.runtime.fixed import packed_products

CORNERS = (-128, 127, 0, 1, -1)
DRIVER = """
#include <ap_int.h>
#include <cstdio>
namespace m3c {
#include "packed_mac.h"
}
int main() {
    long long x, hi, lo;
    while (std::scanf("%lld %lld %lld", &x, &hi, &lo) == 3) {
        m3c::product8_t a, b;
        m3c::packed_products(m3c::mac8_t(x), m3c::pack_weights(hi, lo), a, b);
        std::printf("%lld %lld\\n", (long long)a, (long long)b);
    }
    return 0;
}
"""


CHAIN_DRIVER = """
#include <ap_int.h>
#include <cstdio>
namespace m3c {
#include "packed_mac.h"
}
int main() {
    long long x[m3c::PACKED_CHAIN], hi[m3c::PACKED_CHAIN], lo[m3c::PACKED_CHAIN];
    for (;;) {
        m3c::packed_product_t sum = 0;
        for (int i = 0; i < m3c::PACKED_CHAIN; ++i) {
            if (std::scanf("%lld %lld %lld", &x[i], &hi[i], &lo[i]) != 3) return 0;
            sum += m3c::packed_product_t(m3c::pack_weights(hi[i], lo[i])) * m3c::dsp_b_t(x[i]);
        }
        m3c::chain8_t a, b;
        m3c::split_products(sum, a, b);
        std::printf("%lld %lld\\n", (long long)a, (long long)b);
    }
}
"""


def _operands() -> np.ndarray:
    """Every (x, hi, lo) over the corners, then random 8-bit triples, then unsigned shared
    operands (softmax numerators: 0 ... 255) with signed weights."""
    corners = np.array(list(itertools.product(CORNERS, repeat=3)), np.int64)
    rng = np.random.default_rng(5)
    random = rng.integers(-128, 128, size=(4000, 3))
    unsigned = np.array(list(itertools.product((128, 255), CORNERS, CORNERS)), np.int64)
    probs = np.concatenate([rng.integers(0, 256, size=(1000, 1)),
                            rng.integers(-128, 128, size=(1000, 2))], axis=1)
    return np.concatenate([corners, random, unsigned, probs])


@pytest.fixture(scope="module")
def header(tmp_path_factory) -> Path:
    root = Path(__file__).resolve().parents[2] / "templates"
    text = jinja2.Environment(loader=jinja2.FileSystemLoader(root)).get_template(
        "hls/units/packed_mac.h.j2").render()
    folder = tmp_path_factory.mktemp("packed")
    (folder / "packed_mac.h").write_text(text)
    (folder / "driver.cpp").write_text(DRIVER)
    (folder / "chain.cpp").write_text(CHAIN_DRIVER)
    return folder


def _run(header: Path, driver: str, form: str, triples: np.ndarray) -> np.ndarray:
    """The driver's output lines (two integers each) for the (x, hi, lo) triples, built in the
    C-simulation form of packed_mac.h or its synthesis ap_int form."""
    binary = header / f"{driver}_{form}"
    defines = ["-DM3C_PACKED_AP"] if form == "ap_int" else []
    subprocess.run(["g++", "-std=c++14", "-O1", "-Wall", "-Wextra", *defines,
                    "-isystem", str(csim.ap_types_dir()), "-I", str(header),
                    str(header / f"{driver}.cpp"), "-o", str(binary)], check=True)
    stdin = "\n".join(" ".join(str(v) for v in row) for row in triples)
    out = subprocess.run([str(binary)], input=stdin, capture_output=True, text=True,
                         check=True).stdout
    return np.array([line.split() for line in out.splitlines()], np.int64)


@pytest.mark.parametrize("form", ["csim", "ap_int"])
def test_packed_cpp_equals_separate_products(header, form):
    operands = _operands()
    got = _run(header, "driver", form, operands)
    x, hi, lo = operands.T
    assert got.shape == (len(operands), 2)
    np.testing.assert_array_equal(got[:, 0], x * hi)
    np.testing.assert_array_equal(got[:, 1], x * lo)


def test_packed_numpy_equals_separate_products():
    x, hi, lo = _operands().T
    high, low = packed_products(x, hi, lo)
    np.testing.assert_array_equal(high, x * hi)
    np.testing.assert_array_equal(low, x * lo)


def test_unsigned_low_field_would_break():
    """The sign correction is what makes it exact: without it every negative low product
    leaves its high product one short."""
    x, hi, lo = _operands().T
    product = ((hi << 18) + lo) * x
    uncorrected = product >> 18
    negative = x * lo < 0
    assert negative.any()
    np.testing.assert_array_equal(uncorrected[negative], (x * hi)[negative] - 1)


def _chains() -> np.ndarray:
    """Chains of four (x, hi, lo): the low field's extremes (x 255 or -128 against lo -128,
    every product alike), then random signed and unsigned operands."""
    extremes = [np.tile([x, hi, lo], (4, 1)) for x, hi, lo in itertools.product(
        (255, -128, 127), (-128, 127), (-128, 127))]
    rng = np.random.default_rng(7)
    signed = rng.integers(-128, 128, size=(2000, 4, 3))
    probs = signed.copy()
    probs[..., 0] = rng.integers(0, 256, size=(2000, 4))
    return np.concatenate([np.stack(extremes), signed, probs])


@pytest.mark.parametrize("form", ["csim", "ap_int"])
def test_a_chain_of_packed_products_separates_into_their_sums(header, form):
    """A cascade sums PACKED_CHAIN packed products and separates the sum once (mac_row): the
    two fields are the sums of the separate products, at the chain8_t width."""
    chains = _chains()
    got = _run(header, "chain", form, chains.reshape(-1, 3))
    x, hi, lo = np.moveaxis(chains, -1, 0)
    assert got.shape == (len(chains), 2)
    np.testing.assert_array_equal(got[:, 0], (x * hi).sum(axis=1))
    np.testing.assert_array_equal(got[:, 1], (x * lo).sum(axis=1))


def test_a_fifth_product_would_carry_into_the_high_field():
    """Four is the longest chain: five extreme low products leave the 18-bit low field, and
    the separated sums are wrong."""
    x, hi, lo = 255, 1, -128
    packed = 5 * (((hi << 18) + lo) * x)
    sign = (packed >> 17) & 1
    low = (packed & ((1 << 18) - 1)) - (sign << 18)
    assert low != 5 * x * lo
    assert 4 * abs(x * lo) < 1 << 17 <= 5 * abs(x * lo)
