"""Patch embeddings of every size in fixed point (issue 26): the C-simulated kernel equals the
bit-exact emulation, and the encoder stays within the fixed-point limit of onnxruntime.

A DDR word holds 8 pixels (16-bit lanes): 8- and 16-pixel patches take whole words, while 2-,
4- and 14-pixel patches share words with their neighbours and 14-pixel image rows (42 wide)
start inside words. The embedding is 32 wide, a multiple of the forced 16x8 array's TK and TM,
or 20, a multiple of neither (nor of the DDR word).
"""

from __future__ import annotations

import pytest
from test_fixed import _assert_bit_exact

from m3c.check.hls import check_project
from m3c.check.hygiene import hygiene_findings
from m3c.check.verify_project import verify_project
from m3c.project.compile import compile_model
from m3c.project.trace import trace_project

TILES = (16, 8)  # TK x TM
WIDTHS = {32: 2, 20: 1}  # embedding width -> heads (head_dim 16 and 20)


@pytest.fixture(scope="module")
def project(export_model, tmp_path_factory):
    """A fixed-point project per (patch, embedding width), compiled once per module."""
    cache: dict = {}

    def get(patch: int, dim: int):
        if (patch, dim) not in cache:
            # Two by three patches and one MoE block in which every token takes both experts:
            # among seven tokens, a router near a tie would move one away from onnxruntime by
            # more than the arithmetic does, and verify allows no such token among so few.
            _, path = export_model("micro-nyud", image_size=(2 * patch, 3 * patch),
                                   patch_size=patch, embed_dim=dim, num_heads=WIDTHS[dim],
                                   depth=1, moe_blocks=(0,), num_experts=2, top_k=2)
            out = tmp_path_factory.mktemp(f"patch{patch}") / "build"
            cache[patch, dim] = compile_model(path, out=out, precision="fixed", tiles=TILES)
            assert hygiene_findings(cache[patch, dim]) == []
        return cache[patch, dim]

    return get


@pytest.mark.parametrize("dim", WIDTHS)
@pytest.mark.parametrize("patch", [2, 4, 8, 14, 16])
def test_patch_embedding_in_fixed_point(project, patch, dim):
    built = project(patch, dim)
    # On the project's test vectors: the kernel equals the emulation (so both stand where the
    # kernel does against onnxruntime) and is within the limit of onnxruntime.
    rows = verify_project(built, oracle="ort")
    assert rows and all(row.kernel_error == 0 and row.passed for row in rows), rows
    _assert_bit_exact(built)  # random images, saturating ones among them
    # and every pipelined loop of the patch loaders (words of several patches or image rows
    # included) at its target II, every bank written at a compile-time index
    assert [f.message for f in check_project(built).findings] == []


def test_estimate_counts_the_image_words_of_bands_starting_inside_words(project):
    """14-pixel patches 20 wide take a band per patch row here. A band of a channel is 14 rows
    of 42 pixels, 588 = 73.5 words, from pixel 0 or 588 of the 28 x 42 = 147-word channel:
    74 words read either way, the second band's run starting in the middle of a word."""
    embed = trace_project(project(14, 20))[0]
    assert embed["op"] == "embed"
    words = 2 * 3 * 74  # bands x channels x words
    assert embed["traced"]["ddr_beats"]["gmem_in"] == words
    assert embed["estimated"]["ddr_beats"]["gmem_in"] == words
