"""The C-simulation's fast paths: m3c's hls::stream wakes a waiting process only when its FIFO
has enough to do, yet never leaves a ready process asleep nor misses a deadlock."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from m3c.compile import _templates

STREAM_SCENARIOS = r"""
#include <cstdio>
#include "m3c_dataflow.h"

int main() {
    long long total = 0;
    try {
#if SCENARIO == 1
        // Ping-pong over deep FIFOs: each value is read while its FIFO holds one value, far
        // below the half a notification waits for; only the writer's own wait wakes the reader.
        hls::stream<int, 64> values("values");
        hls::stream<int, 64> acks("acks");
        M3C_DATAFLOW_BEGIN
        M3C_PROCESS(for (int i = 0; i < 2000; ++i) { values.write(i); total += acks.read(); })
        M3C_PROCESS(for (int i = 0; i < 2000; ++i) acks.write(values.read() + 1))
        M3C_DATAFLOW_END
#elif SCENARIO == 2
        // A trickle, then a long computation, then the end: the reader waits on a FIFO that
        // never fills to half; the writer's finish wakes it.
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
        // A real deadlock behind a FIFO that is ready but not worth a notification: the writer
        // waits for a reply the reader never sends, the reader for a value never written.
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
    environment = _templates()
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
