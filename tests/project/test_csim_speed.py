"""The C-simulation's fast paths: dataflow processes as coroutines over m3c's bounded
hls::stream (none left waiting while it could go on, every deadlock found), and the exact
integer shortcuts of hot helpers, bit for bit against the ap_types code Vitis sees."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from m3c.project import csim
from m3c.project.render import template_environment

STREAM_SCENARIOS = r"""
#include <cstdio>
#include "m3c_dataflow.h"

int main() {
    long long total = 0;
    try {
#if SCENARIO == 1
        // Ping-pong over deep FIFOs: each process waits on every value it reads.
        hls::stream<int, 64> values("values");
        hls::stream<int, 64> acks("acks");
        M3C_DATAFLOW_BEGIN
        M3C_PROCESS(for (int i = 0; i < 2000; ++i) { values.write(i); total += acks.read(); })
        M3C_PROCESS(for (int i = 0; i < 2000; ++i) acks.write(values.read() + 1))
        M3C_DATAFLOW_END
#elif SCENARIO == 2
        // A trickle, then a long computation, then the end: the reader waits on a FIFO that
        // never fills up.
        hls::stream<int, 64> values("values");
        volatile long long spin = 0;
        M3C_DATAFLOW_BEGIN
        M3C_PROCESS(for (int i = 0; i < 3; ++i) values.write(i);
                    for (int i = 0; i < 20000000; ++i) spin = spin + i)
        M3C_PROCESS(for (int i = 0; i < 3; ++i) total += values.read())
        M3C_DATAFLOW_END
#elif SCENARIO == 3
        // Three processes in a ring passing one token round: no FIFO ever holds two values.
        hls::stream<int, 16> a("a");
        hls::stream<int, 16> b("b");
        hls::stream<int, 16> c("c");
        M3C_DATAFLOW_BEGIN
        M3C_PROCESS(int x = 0; for (int i = 0; i < 3000; ++i) { a.write(x); x = c.read() + 1; }
                    total = x)
        M3C_PROCESS(for (int i = 0; i < 3000; ++i) b.write(a.read() + 1))
        M3C_PROCESS(for (int i = 0; i < 3000; ++i) c.write(b.read() + 1))
        M3C_DATAFLOW_END
#elif SCENARIO == 4
        // A real deadlock after some progress: the writer waits for a reply the reader never
        // sends, the reader for a value never written.
        hls::stream<int, 64> values("values");
        hls::stream<int, 2> replies("replies");
        M3C_DATAFLOW_BEGIN
        M3C_PROCESS(values.write(1); total += replies.read())
        M3C_PROCESS(total += values.read(); total += values.read())
        M3C_DATAFLOW_END
#elif SCENARIO == 5
        // A fast writer into a bounded FIFO with a slow reader, then the reverse, many times.
        hls::stream<int, 147> words("words");
        for (int round = 0; round < 20; ++round) {
            M3C_DATAFLOW_BEGIN
            M3C_PROCESS(for (int i = 0; i < 5000; ++i) words.write(i))
            M3C_PROCESS(for (int i = 0; i < 5000; ++i) total += words.read() * (round + 1))
            M3C_DATAFLOW_END
        }
#elif SCENARIO == 6
        // A deadlocked region, then a sound one: nothing of the first is left behind.
        hls::stream<int, 2> values("values");
        try {
            M3C_DATAFLOW_BEGIN
            M3C_PROCESS(for (int i = 0; i < 5; ++i) values.write(i))
            M3C_PROCESS(total += values.read())
            M3C_DATAFLOW_END
        } catch (const m3c::csim::Deadlock&) {
            total += 100;
        }
        int left = 0;
        while (values.read_nb(left)) total += left;
        M3C_DATAFLOW_BEGIN
        M3C_PROCESS(for (int i = 0; i < 5; ++i) values.write(i))
        M3C_PROCESS(for (int i = 0; i < 5; ++i) total += values.read())
        M3C_DATAFLOW_END
#elif SCENARIO == 7
        // A process with a few megabytes of locals, and a reader that polls with read_nb.
        hls::stream<int, 4> values("values");
        M3C_DATAFLOW_BEGIN
        M3C_PROCESS(volatile char big[4 << 20]; for (int i = 0; i < (4 << 20); i += 4096)
                    big[i] = char(i); for (int i = 0; i < 100; ++i) values.write(big[i * 4096]))
        M3C_PROCESS(int got = 0; int value = 0;
                    while (got < 100) if (values.read_nb(value)) { total += value; ++got; })
        M3C_DATAFLOW_END
#elif SCENARIO == 8
        // Pollers on both sides: a writer that waits for room with full(), a reader that waits
        // for values with empty().
        hls::stream<int, 2> values("values");
        M3C_DATAFLOW_BEGIN
        M3C_PROCESS(for (int i = 0; i < 50; ++i) { while (values.full()) {} values.write(i); })
        M3C_PROCESS(for (int i = 0; i < 50; ++i) { while (values.empty()) {} total += values.read();
                    })
        M3C_DATAFLOW_END
#endif
    } catch (const m3c::csim::Deadlock& deadlock) {
        std::printf("%s\n", deadlock.what());
        return 3;
    }
    std::printf("%lld\n", total);
    return 0;
}
"""


@pytest.fixture(scope="module")
def stream_headers(tmp_path_factory) -> Path:
    """m3c's hls_stream.h and m3c_dataflow.h as a project holds them (neither has parameters)."""
    root = tmp_path_factory.mktemp("stream")
    environment = template_environment()
    for template in ("hls/csim/hls_stream.h.j2", "hls/kernel/m3c_dataflow.h.j2"):
        (root / Path(template).name[:-3]).write_text(environment.get_template(template).render())
    return root


def _scenario(headers: Path, number: int) -> subprocess.CompletedProcess:
    source = headers / "scenarios.cpp"
    source.write_text(STREAM_SCENARIOS)
    binary = headers / f"scenario{number}"
    subprocess.run(["g++", "-std=c++14", "-O2", "-pthread", "-Wall", "-Wextra", "-Werror",
                    f"-DSCENARIO={number}", f"-I{headers}", str(source), "-o", str(binary)],
                   check=True)
    return subprocess.run([binary], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("number, printed", [
    (1, str(sum(i + 1 for i in range(2000)))),  # no false deadlock, no hang
    (2, "3"),
    (3, str(3 * 3000)),
    (5, str(sum(range(5000)) * sum(range(1, 21)))),
    (6, str(0 + 100 + (1 + 2) + sum(range(5)))),  # read 0, deadlock, 1 and 2 left, then all
    (7, "0"),  # big[i * 4096] holds char(i * 4096): 0
    (8, str(sum(range(50)))),
])
def test_a_ready_process_is_never_left_asleep(stream_headers, number, printed):
    result = _scenario(stream_headers, number)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == printed + "\n"


def test_a_deadlock_behind_a_ready_fifo_is_still_found(stream_headers):
    result = _scenario(stream_headers, 4)
    assert result.returncode == 3, result.stdout + result.stderr
    assert result.stdout.startswith("dataflow deadlock: every process waits (")
    assert "'replies' empty" in result.stdout and "'values' empty" in result.stdout


# normalise over corner and random operands, and the conversions of raw sums: the project's own
# functions (built twice: with their exact integer shortcuts, and with -DM3C_AP_REFERENCE on the
# ap_fixed code alone), then the shortcuts against the ap_fixed code for other type choices a
# precision config can make.
NORMALISE_PROGRAM = r"""
#include <cstdint>
#include <cstdio>
#include <vector>

#include "kernel.h"
#include "m3c_ops.h"

namespace {

typedef ap_fixed<16, 2, AP_RND_CONV, AP_SAT> weight16;
typedef ap_ufixed<24, 10, AP_RND_CONV, AP_SAT> norm24;

std::uint64_t state = 0x9e3779b97f4a7c15ULL;
std::uint64_t next() {  // splitmix64
    std::uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

template <typename T>
T from_bits(std::uint64_t bits) {
    T value;
    value.range(T::width - 1, 0) = bits;
    return value;
}

template <typename T>
long long bits_of(const T& value) {
    return (long long)value.range(T::width - 1, 0).to_uint64();
}

// Raw codes worth trying for a W-bit type: the ends of its range, around zero, powers of two
// and their neighbours (rounding ties), then random ones.
std::vector<std::uint64_t> corners(int width, int randoms) {
    const std::uint64_t mask = width == 64 ? ~0ULL : (1ULL << width) - 1;
    std::vector<std::uint64_t> codes = {0, 1, 2, 3, mask, mask - 1, mask >> 1, (mask >> 1) + 1,
                                        (mask >> 1) - 1, (mask >> 1) + 2};
    for (int k = 2; k < width; k += 3) {
        codes.push_back(1ULL << k);
        codes.push_back((1ULL << k) + 1);
        codes.push_back((1ULL << k) - 1);
        codes.push_back(mask - (1ULL << k) + 1);
    }
    for (int r = 0; r < randoms; ++r) codes.push_back(next() & mask);
    for (auto& code : codes) code &= mask;
    return codes;
}

// A random raw value of any magnitude up to 64 bits.
long long any_raw() { return (long long)next() >> (next() % 64); }

template <typename D, typename V, typename N, typename W, typename A>
D reference(D x, D mean, N inv, W g, W b) {  // matmul.h's normalise on these types
    const auto centred = (V(x) - V(mean)) * inv;
    const D normed = D(centred);
    const auto scaled = normed * g;
    return D(A(scaled) + A(b));
}

#ifndef M3C_AP_REFERENCE
template <typename D, typename V, typename N, typename W, typename A>
long long mismatches(const char* name, int randoms) {
    typedef m3c::ExactNormalise<D, V, N, W, A> Exact;
    static_assert(Exact::ok, "the shortcut covers these types");
    long long wrong = 0, total = 0;
    const auto check = [&](std::uint64_t x, std::uint64_t mean, std::uint64_t inv,
                           std::uint64_t g, std::uint64_t b) {
        const D args[2] = {from_bits<D>(x), from_bits<D>(mean)};
        const N n = from_bits<N>(inv);
        const W gb[2] = {from_bits<W>(g), from_bits<W>(b)};
        const D want = reference<D, V, N, W, A>(args[0], args[1], n, gb[0], gb[1]);
        const D got = Exact::run(args[0], args[1], n, gb[0], gb[1]);
        ++total;
        if (bits_of(want) != bits_of(got) && wrong++ < 5)
            std::printf("%s: x %llx mean %llx inv %llx g %llx b %llx: %llx, want %llx\n", name,
                        (unsigned long long)x, (unsigned long long)mean,
                        (unsigned long long)inv, (unsigned long long)g,
                        (unsigned long long)b, (unsigned long long)bits_of(got),
                        (unsigned long long)bits_of(want));
    };
    const auto xs = corners(D::width, 4), ns = corners(N::width, 4), ws = corners(W::width, 2);
    for (auto x : xs)
        for (auto mean : xs)
            for (auto inv : ns)
                for (int j = 0; j < 8; ++j) check(x, mean, inv, ws[next() % ws.size()],
                                                  ws[next() % ws.size()]);
    for (int r = 0; r < randoms; ++r) {
        const std::uint64_t x = next(), mean = next(), inv = next(), g = next(), b = next();
        check(x, mean, inv, g, b);
        check(x, x ^ (next() & 0xff), inv, g, b);  // a value near its mean
    }
    std::printf("%s: %lld of %lld differ\n", name, wrong, total);
    return wrong;
}


template <typename T, typename S>
long long cast_mismatches(const char* name) {
    static_assert(m3c::Fixed<T>::known && m3c::Fixed<S>::known, "a modelled pair");
    long long wrong = 0, total = 0;
    auto codes = corners(S::width, 20000);
    for (int r = 0; r < 200000; ++r) codes.push_back((std::uint64_t)any_raw());
    for (const auto code : codes) {
        const S x = from_bits<S>(code);
        const T want = T(x), got = m3c::Cast<T, S>::run(x);
        ++total;
        if (bits_of(want) != bits_of(got) && wrong++ < 5)
            std::printf("%s: %llx -> %llx, want %llx\n", name, (unsigned long long)code,
                        (unsigned long long)bits_of(got), (unsigned long long)bits_of(want));
    }
    std::printf("%s: %lld of %lld differ\n", name, wrong, total);
    return wrong;
}
#endif

}  // namespace

int main(int argc, char** argv) {
    (void)argc;
    // The project's normalise: raw results to a file the test compares between the builds.
    std::FILE* out = std::fopen(argv[1], "wb");
    const auto xs = corners(data_t::width, 8), ns = corners(norm_t::width, 8);
    const auto ws = corners(weight_t::width, 8);
    std::vector<long long> results;
    for (auto x : xs)
        for (auto mean : xs)
            for (auto inv : ns)
                for (int j = 0; j < 6; ++j)
                    results.push_back(bits_of(m3c::normalise(
                        from_bits<data_t>(x), from_bits<data_t>(mean), from_bits<norm_t>(inv),
                        from_bits<weight_t>(ws[next() % ws.size()]),
                        from_bits<weight_t>(ws[next() % ws.size()]))));
    for (int r = 0; r < 1000000; ++r)
        results.push_back(bits_of(m3c::normalise(
            from_bits<data_t>(next()), from_bits<data_t>(next()), from_bits<norm_t>(next()),
            from_bits<weight_t>(next()), from_bits<weight_t>(next()))));
    // The project's conversions of raw sums and accumulators (from_raw, fixed_cast).
    for (int r = 0; r < 300000; ++r) {
        const long long raw = any_raw();
        results.push_back(bits_of(m3c::from_raw<data_t, m3c::ACC_FRAC>(raw)));
        results.push_back(bits_of(m3c::from_raw<data_t, m3c::DATA_FRAC>(raw)));
        results.push_back(bits_of(m3c::from_raw<acc_t, m3c::ACC_FRAC + 3>(raw)));
        results.push_back(bits_of(m3c::from_raw<recip_t, m3c::RECIP_FRAC>(raw)));
        results.push_back(bits_of(m3c::from_raw<norm_t, m3c::NORM_FRAC>(raw)));
        results.push_back(bits_of(m3c::from_raw<logit_t, 0>(raw)));
        const acc_t sum = from_bits<acc_t>((std::uint64_t)raw);
        results.push_back(bits_of(m3c::fixed_cast<data_t>(sum)));
        results.push_back(bits_of(m3c::fixed_cast<logit_t>(sum)));
        results.push_back(bits_of(m3c::activate(sum, m3c::ACT_NONE, 0)));
    }
    std::fwrite(results.data(), sizeof(long long), results.size(), out);
    std::fclose(out);
    long long wrong = 0;
#ifndef M3C_AP_REFERENCE
    static_assert(m3c::ExactNormalise<data_t, var_t, norm_t, weight_t, acc_t>::ok,
                  "the project's types take the shortcut");
    wrong += mismatches<ap_fixed<16, 4, AP_RND_CONV, AP_SAT>, ap_fixed<42, 18>,
                        norm24, weight16,
                        ap_fixed<48, 19>>("default", 200000);
    wrong += mismatches<ap_fixed<18, 8, AP_TRN, AP_WRAP>, ap_fixed<46, 20>,
                        norm24, ap_fixed<12, 3, AP_RND_CONV, AP_SAT>,
                        ap_fixed<44, 18>>("trn-wrap", 200000);
    wrong += mismatches<ap_fixed<12, 5, AP_RND_CONV, AP_WRAP>, ap_fixed<40, 16>,
                        ap_ufixed<20, 8, AP_TRN, AP_SAT>, ap_fixed<8, 1, AP_TRN, AP_SAT>,
                        ap_fixed<40, 16>>("conv-wrap", 200000);
    wrong += mismatches<ap_fixed<10, 6, AP_TRN, AP_SAT>, ap_fixed<30, 14>,
                        ap_ufixed<12, 14, AP_RND_CONV, AP_WRAP>, ap_fixed<6, 7, AP_TRN, AP_WRAP>,
                        ap_fixed<36, 20>>("negative-frac", 200000);
    wrong += mismatches<ap_fixed<24, 8, AP_RND_CONV, AP_SAT>, ap_fixed<56, 24>,
                        ap_ufixed<32, 12, AP_RND_CONV, AP_SAT>, weight16,
                        ap_fixed<60, 26>>("wide", 200000);
    wrong += cast_mismatches<ap_fixed<16, 4, AP_RND_CONV, AP_SAT>, ap_fixed<48, 19>>("acc-data");
    wrong += cast_mismatches<ap_fixed<32, 16, AP_RND_CONV, AP_SAT>, ap_fixed<48, 19>>("acc-logit");
    wrong += cast_mismatches<ap_fixed<12, 3, AP_TRN, AP_WRAP>, ap_fixed<48, 19>>("trn-wrap");
    wrong += cast_mismatches<ap_fixed<10, 3, AP_RND_CONV, AP_WRAP>, ap_fixed<40, 30>>("conv-wrap");
    wrong += cast_mismatches<ap_fixed<20, 12, AP_TRN, AP_SAT>, ap_fixed<24, 4>>("widening");
    wrong += cast_mismatches<ap_ufixed<24, 1, AP_RND_CONV, AP_SAT>, ap_fixed<63, 35>>("unsigned");
    wrong += cast_mismatches<ap_ufixed<8, 12, AP_RND_CONV, AP_WRAP>, ap_fixed<63, 20>>("coarse");
    wrong += cast_mismatches<ap_fixed<16, 4, AP_RND_CONV, AP_SAT>, ap_ufixed<18, 1>>("from-u");
    static_assert(!m3c::ExactNormalise<ap_fixed<16, 4>, ap_fixed<42, 18>, ap_ufixed<24, 10>,
                                       ap_fixed<16, 2>, ap_fixed<40, 19>>::ok,
                  "an inexact conversion keeps the ap_fixed code");
    static_assert(!m3c::ExactNormalise<ap_fixed<16, 4, AP_RND>, ap_fixed<42, 18>,
                                       ap_ufixed<24, 10>, ap_fixed<16, 2>, ap_fixed<48, 19>>::ok,
                  "so does a quantisation mode it does not model");
#endif
    std::printf("%zu results, %lld shortcut mismatches\n", results.size(), wrong);
    return wrong == 0 ? 0 : 1;
}
"""


def _normalise_results(project: Path, tmp_path: Path, reference: bool) -> bytes:
    source = tmp_path / "normalise.cpp"
    source.write_text(NORMALISE_PROGRAM)
    name = "reference" if reference else "shortcut"
    binary = tmp_path / name
    command = csim.compile_command(project, [], binary, shared=False)  # [..., "-o", binary]
    defines = ["-DM3C_AP_REFERENCE"] if reference else []
    command = [*command[:-2], "-Werror", *defines, str(source), *command[-2:]]
    build = subprocess.run(command, capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-3000:]
    run = subprocess.run([binary, tmp_path / f"{name}.bin"], capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stdout[-3000:]
    return (tmp_path / f"{name}.bin").read_bytes()


def test_exact_integer_helpers_equal_ap_fixed_bit_for_bit(compiled, tmp_path):
    project = compiled("micro-nyud", "multi", precision="fixed")[1]
    shortcut = _normalise_results(project, tmp_path, reference=False)
    reference = _normalise_results(project, tmp_path, reference=True)
    assert len(shortcut) == len(reference) > 8_000_000
    assert shortcut == reference


@pytest.mark.parametrize("precision", ["fixed", "int8"])
def test_csim_shortcuts_change_no_bit_of_the_kernel(compiled, tmp_path, precision):
    """The whole kernel built with its C-simulation shortcuts and with -DM3C_AP_REFERENCE (the
    code Vitis sees alone) gives the same features, saturating inputs included."""
    project = compiled("micro-nyud", "multi", precision=precision)[1]
    library = tmp_path / "reference.so"
    command = csim.compile_command(project, csim.KERNEL_SOURCES, library, shared=True)
    build = subprocess.run([*command[:-2], "-DM3C_AP_REFERENCE", *command[-2:]],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-3000:]
    fast = csim.load(project)
    reference = csim.CSimKernel(library, fast.weights)
    manifest = json.loads((project / "project.json").read_text())
    rng = np.random.default_rng(3)
    for task, scale in ((0, 1.0), (1, 60.0)):
        image = (rng.standard_normal(manifest["image_shape"]) * scale).astype(np.float32)
        assert np.array_equal(fast.run(image, task), reference.run(image, task))
