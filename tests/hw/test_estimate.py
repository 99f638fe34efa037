"""Resource and cycle models, and the design-space exploration: properties, not fixed numbers."""

from __future__ import annotations

import json
import math
import re
from dataclasses import replace

import pytest

from m3c.cli import main
from m3c.frontend.models.config import preset
from m3c.hw.configs import calls_for_config
from m3c.hw.design import Design, EstimateError, Precision
from m3c.hw.dse import check_budget, choose_design, parse_tiles
from m3c.hw.estimate import call_macs, estimate_calls, total_cycles
from m3c.hw.fit import check_fit, unit_resources
from m3c.hw.resources import (
    BRAM18_SHAPES,
    URAM_DEPTH,
    URAM_WIDTH,
    bram18_blocks,
    overflows,
    total_resources,
    uram_blocks,
)
from m3c.hw.schedule import expert_compute_cycles, expert_load_cycles, expert_schedule
from m3c.hw.target import load_target
from m3c.hw.units.base import tile_cost
from m3c.project.compile import compile_model

FIXED16 = Precision(data=16, weight=16, acc=32, prob=16, floating=False)
ZCU104 = load_target("zcu104")
DIMENSIONS = ("tokens", "dim", "in_dim", "out_dim", "heads", "head_dim", "experts", "top_k",
              "hidden", "channels", "height", "width", "patch", "patches", "weight_rows",
              "bias_rows", "activation", "source", "target")


@pytest.fixture(scope="module", params=["multi", "task"])
def micro_project(request, export_model, tmp_path_factory):
    _, path = export_model("micro-nyud", request.param)
    return compile_model(path, out=tmp_path_factory.mktemp("estimate") / "build")


def _config(name: str, **overrides) -> dict:
    return json.loads(preset(name, **overrides).to_json())


def _dimensions(call: dict) -> dict:
    return {k: v for k, v in call.items() if k in DIMENSIONS}


def test_call_list_from_config_matches_codegen(micro_project):
    kernel = json.loads((micro_project / "kernel.json").read_text())
    manifest = json.loads((micro_project / "project.json").read_text())
    calls, capacities = calls_for_config(manifest["config"])
    assert capacities == kernel["capacities"]
    assert [c["op"] for c in calls] == [c["op"] for c in kernel["calls"]]
    assert [_dimensions(c) for c in calls] == [_dimensions(c) for c in kernel["calls"]]


def _design(name: str, tiles, precision=FIXED16, **overrides) -> tuple[list, Design]:
    calls, capacities = calls_for_config(_config(name, **overrides))
    return calls, Design(ZCU104, capacities, tiles, precision)


@pytest.mark.parametrize("name", ["micro-nyud", "tiny-cityscapes", "small-nyud"])
@pytest.mark.parametrize("tiles", [(8, 8), (16, 8), (32, 16), (48, 32), (64, 24)])
def test_no_call_beats_the_array_or_the_port(name, tiles):
    """Every call takes at least its MACs over the array's MACs per cycle, and at least one
    cycle per DDR word it moves."""
    calls, design = _design(name, tiles)
    for estimate, call in zip(estimate_calls(calls, design), calls, strict=True):
        top_k = call.get("top_k", next((c["top_k"] for c in calls if c["op"] == "route"), 1))
        macs = call_macs(call, top_k)
        assert estimate.array_cycles >= math.ceil(macs / design.geometry.macs), call["layer"]
        assert estimate.cycles >= estimate.array_cycles
        assert estimate.cycles >= max(estimate.beats.values()), call["layer"]


def test_a_tile_waits_for_its_panels_when_it_has_few_rows():
    _, design = _design("tiny-cityscapes", (32, 16))
    g = design.geometry
    many, few = tile_cost(g, 256, 192, 192), tile_cost(g, 8, 192, 192)
    steps = g.chunks(192) * 12
    assert many.array_cycles >= steps * 256
    assert few.array_cycles >= steps * g.panel_words  # load-bound: the panel fill per step
    assert many.beats["gmem_w"] == few.beats["gmem_w"] == g.matmul_words(192, 192)


def test_fixed_point_is_cheaper_than_float():
    _, fixed = _design("tiny-cityscapes", (16, 8), FIXED16)
    _, floating = _design("tiny-cityscapes", (16, 8), Precision())
    assert total_resources(unit_resources(fixed)).dsp < total_resources(
        unit_resources(floating)).dsp


def test_bigger_arrays_are_faster_and_bigger():
    for small, big in (((16, 8), (32, 8)), ((32, 8), (32, 16)), ((32, 16), (64, 32))):
        calls, base = _design("small-nyud", small)
        _, grown = _design("small-nyud", big)
        assert total_cycles(calls, grown) < total_cycles(calls, base)
        assert total_resources(unit_resources(grown)).dsp > total_resources(
            unit_resources(base)).dsp


@pytest.mark.parametrize("depth", [1, 100, 512, 513, 1201, 4096, 20000, 294912])
@pytest.mark.parametrize("width", [1, 9, 16, 32, 40, 72])
def test_memory_blocks_hold_the_bank(depth, width):
    blocks = bram18_blocks(depth, width)
    assert blocks * 18 * 1024 >= depth * width
    # no shape would need fewer blocks (each shape checked on its own)
    assert blocks == min(math.ceil(width / w) * math.ceil(depth / d) for d, w in BRAM18_SHAPES)
    urams = uram_blocks(depth, width)
    assert urams * URAM_DEPTH * URAM_WIDTH >= depth * width


def test_design_that_does_not_fit_is_refused_with_a_table():
    _, design = _design("tiny-cityscapes", (128, 64), Precision())
    with pytest.raises(EstimateError) as error:
        check_fit(design)
    assert "dsp" in str(error.value) and "available" in str(error.value)


@pytest.mark.parametrize("budget", [0.5, 0.8, 1.0])
def test_exploration_fits_the_budget_and_beats_other_fitting_arrays(budget):
    calls, capacities = calls_for_config(_config("tiny-cityscapes"))
    choice = choose_design(calls, capacities, ZCU104, FIXED16, budget)
    assert not overflows(choice.resources, ZCU104, budget)
    for pair in [(16, 8), (32, 16), (32, 32), (48, 32), (64, 24), (64, 32)]:
        design = Design(ZCU104, capacities, pair, FIXED16, choice.design.row_tile,
                        choice.design.query_tile)
        if not overflows(total_resources(unit_resources(design, budget)), ZCU104, budget):
            assert choice.cycles <= sum(e.cycles for e in estimate_calls(calls, design))


def test_memoised_cycles_equal_a_fresh_estimate_at_every_design_point():
    calls, capacities = calls_for_config(_config("tiny-cityscapes"))
    memo: dict = {}
    for tiles in [(16, 8), (16, 16), (32, 8)]:
        for row_tile in (128, 256):
            for query_tile in (32, 64):
                design = Design(ZCU104, capacities, tiles, FIXED16, row_tile, query_tile)
                fresh = sum(e.cycles for e in estimate_calls(calls, design))
                assert total_cycles(calls, design, memo=memo) == fresh


def test_smaller_budget_never_gives_a_faster_design():
    calls, capacities = calls_for_config(_config("tiny-cityscapes"))
    cycles = [choose_design(calls, capacities, ZCU104, FIXED16, b).cycles
              for b in (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)]
    assert cycles == sorted(cycles, reverse=True)


def test_expert_panels_stream_while_the_array_computes():
    calls, design = _design("tiny-cityscapes", (32, 16))
    call = next(c for c in calls if c["op"] == "experts")
    queues = [0, 5, 1, 40, 3, 0, 2, 7] + [1] * (call["experts"] - 8)
    steps = expert_schedule(call, design, queues)
    assert [s.expert for s in steps] == [e for e, n in enumerate(queues) if n]
    load = expert_load_cycles(call, design)
    for step in steps:
        busy = expert_compute_cycles(call, design, step.tokens)
        took = step.compute_end - step.compute_start
        # never faster than computing with the weights at hand, nor than streaming them
        assert took >= busy and took >= load
        assert took < busy + load + 200  # loads overlap the rows rather than adding up
    for before, after in zip(steps, steps[1:], strict=False):
        assert after.compute_start == before.compute_end


def test_bad_tiles_and_budgets_are_refused():
    for text in ("0x4", "4", "axb", "4x-1"):
        with pytest.raises(EstimateError):
            parse_tiles(text)
    assert parse_tiles("32x16") == (32, 16)
    for budget in (0, -0.5, 1.01):
        with pytest.raises(EstimateError):
            check_budget(budget)


def test_compile_uses_forced_tiles(export_model, tmp_path):
    _, path = export_model("micro-nyud")
    project = compile_model(path, out=tmp_path / "build", tiles=(16, 8))
    assert json.loads((project / "project.json").read_text())["tiles"] == [16, 8]
    header = (project / "hls" / "src" / "m3c_ops.h").read_text()
    assert "TK = 16;" in header and "TM = 8;" in header


def test_multipliers_a_design_puts_on_dsps_are_bound_to_them_in_the_code(
        export_model, tmp_path, monkeypatch):
    """A design with every multiplier group on DSPs (forced on the DSE) compiles to
    code whose bind_op pragmas say dsp for each group (fabric only for the index products),
    recorded in project.json, and the hygiene analysis finds the code and estimate agree."""
    import functools

    from m3c.check.hygiene import hygiene_findings
    from m3c.hw.resources import MULTIPLIER_GROUPS

    monkeypatch.setattr("m3c.project.compile.choose_design", functools.partial(
        choose_design, dsp_multipliers=frozenset(MULTIPLIER_GROUPS)))
    _, path = export_model("micro-nyud")
    project = compile_model(path, out=tmp_path / "build", precision="fixed")
    manifest = json.loads((project / "project.json").read_text())
    assert manifest["dsp_multipliers"] == sorted(MULTIPLIER_GROUPS)
    source = (project / "hls/src/m3c_ops.h").read_text()
    bound = re.findall(r"op=mul impl=(\w+)\)  // multipliers: (\w+)", source)
    assert {group for impl, group in bound if impl == "dsp"} == set(MULTIPLIER_GROUPS)
    assert {group for impl, group in bound if impl == "fabric"} == {"index"}
    assert hygiene_findings(project) == []
    design = Design.of_project(manifest, json.loads((project / "kernel.json").read_text()))
    array = design.geometry.dsps * design.precision.mac_dsp
    assert total_resources(unit_resources(design)).dsp > array


@pytest.mark.parametrize("extra", [["--tiles", "256x256"], ["--tiles", "0x8"],
                                   ["--tiles", "16x6"], ["--budget", "1.5"]])
def test_cli_refuses_impossible_designs(export_model, tmp_path, capsys, extra):
    _, path = export_model("micro-nyud")
    out = tmp_path / "build"
    assert main(["compile", str(path), "-o", str(out), *extra]) == 2
    assert "error" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("types, expected", [
    (None, Precision()),
    ({"data": "float", "weight": "float", "acc": "float", "prob": "float"}, Precision()),
    ({"data": "ap_fixed<16,6>", "weight": "ap_fixed<16,2>", "acc": "ap_fixed<40,16>",
      "prob": "ap_ufixed<16,1>", "logit": "ap_fixed<32,16>"}, Precision(16, 16, 40, 16, False)),
    ({"data": {"width": 16}, "weight": {"width": 8}, "acc": {"width": 32},
      "prob": {"width": 16}, "logit": {"width": 24}}, Precision(16, 8, 32, 16, False, 24)),
])
def test_precision_from_project_types(types, expected):
    assert Precision.from_types(types) == expected


def test_unknown_type_is_refused():
    with pytest.raises(EstimateError):
        Precision.from_types({"data": "posit<16>"})


def test_packed_array_halves_dsps_and_8bit_panels_halve_ddr():
    """Two 8-bit products per DSP48E2: the same TK x TM array on half the DSPs; an 8-bit
    product streams half the panel words and takes one pass, a 16-bit one two."""
    from m3c.hw.configs import as_int8

    calls, capacities = calls_for_config(_config("small-nyud"))
    marked, packed = as_int8(calls, capacities)
    wide = Design(ZCU104, capacities, (64, 48), FIXED16, 384, 64)
    narrow = Design(ZCU104, packed, (64, 48), FIXED16, 384, 64)
    assert unit_resources(narrow)["matmul"].dsp * 2 == unit_resources(wide)["matmul"].dsp
    g = narrow.geometry
    eight, sixteen = (tile_cost(g, 197, 384, 384, narrow=n) for n in (True, False))
    assert eight.beats["gmem_w"] <= 0.51 * sixteen.beats["gmem_w"]  # biases stay 16-bit
    assert 1.9 * eight.array_cycles < sixteen.array_cycles  # rows-bound: one pass vs two
    # With rows enough to hide most of a 16-bit panel's load, the unpacked array's 16-bit
    # product takes about as long as the packed array's 8-bit one (on half the DSPs).
    assert tile_cost(g, 384, 384, 384, narrow=True).array_cycles == pytest.approx(
        tile_cost(wide.geometry, 384, 384, 384).array_cycles, rel=0.02)


def test_small_nyud_fits_the_caps_in_both_precisions():
    """At the default budget (the caps) the DSE's designs fit and are bound by them (a
    resource above 95% of its cap, DSPs, LUTs and BRAM each above 85%): 16-bit with its array
    on the DSPs and its multipliers in fabric, int8 (the packing logic in front of every DSP,
    two running sums per DSP column) with multipliers on the DSPs its array leaves free."""
    from m3c.hw.configs import as_int8
    from m3c.hw.resources import limits

    calls, capacities = calls_for_config(_config("small-nyud"))
    caps = limits(ZCU104)
    assert (caps.lut, caps.dsp, caps.bram18) == (161280, 1555, 530)
    for packed, (these, sizes) in enumerate(((calls, capacities), as_int8(calls, capacities))):
        choice = choose_design(these, sizes, ZCU104, FIXED16)
        assert choice.design.geometry.packed == bool(packed)
        assert not overflows(choice.resources, ZCU104)
        shares = {kind: getattr(choice.resources, kind) / getattr(caps, kind)
                  for kind in ("dsp", "lut", "bram18")}
        assert min(shares.values()) > 0.85 and max(shares.values()) > 0.95, shares
        assert bool(choice.design.dsp_multipliers) == bool(packed)


def test_multipliers_go_to_free_dsps_only_as_far_as_the_luts_need():
    """int8 small-nyud: the DSE's design binds multiplier groups to the DSPs its array leaves
    free, the most LUTs saved per DSP first, and no more than its LUTs need (without the last
    group it took they overflow); the estimate counts each bound group's DSPs."""
    from m3c.hw.configs import as_int8
    from m3c.hw.fit import multiplier_trades
    from m3c.hw.resources import Multipliers, dsp_tiles
    from m3c.hw.units import UNITS

    calls, capacities = as_int8(*calls_for_config(_config("small-nyud")))
    design = choose_design(calls, capacities, ZCU104, FIXED16).design
    taken = [group for group, _, _ in multiplier_trades(design)
             if group in design.dsp_multipliers]
    assert taken and set(taken) == design.dsp_multipliers
    fewer = replace(design, dsp_multipliers=frozenset(taken[:-1]))
    assert [row["resource"] for row in overflows(
        total_resources(unit_resources(fewer)), ZCU104)] == ["lut"]
    groups: list[Multipliers] = [m for unit in UNITS for m in unit.multipliers(design)]
    bound = sum(m.count * dsp_tiles(m.a, m.b) for m in groups
                if m.group in design.dsp_multipliers)
    array = design.geometry.dsps * design.precision.mac_dsp
    assert total_resources(unit_resources(design)).dsp == array + bound > array


def test_board_facts_are_the_data_sheets():
    """DS891: the xczu7ev has 230,400 LUTs and 460,800 flip-flops (504K is its logic cells)."""
    assert (ZCU104.lut, ZCU104.ff, ZCU104.dsp, 2 * ZCU104.bram36, ZCU104.uram) == (
        230400, 460800, 1728, 624, 96)


def test_the_resource_model_counts_what_the_generated_code_declares(compiled):
    """The m_axi buffers from the outstanding bursts kernel.cpp sets, the lookup tables at the
    width m3c_tables.h declares them, the array's wiring and reduction in its LUTs."""
    import re

    from m3c.hw.fit import unit_logic
    from m3c.hw.resources import bram18_blocks
    from m3c.hw.units.shared import Interfaces, Matmul, table_bits

    project = compiled("micro-nyud", "multi", precision="fixed")[1]
    kernel = (project / "hls/src/kernel.cpp").read_text()
    settings = dict(re.findall(r"bundle=(\w+) .*?num_(?:read|write)_outstanding=(\d+)", kernel))
    assert {bundle: int(n) for bundle, n in settings.items()} == Interfaces.OUTSTANDING
    manifest = json.loads((project / "project.json").read_text())
    precision = Precision.from_types(manifest["types"])
    design = Design(ZCU104, json.loads((project / "kernel.json").read_text())["capacities"],
                    tuple(manifest["tiles"]), precision)
    tables = (project / "hls/src/m3c_tables.h").read_text()
    assert f"typedef ap_uint<{table_bits(precision)}> table_t;" in tables
    # a copy of the GELU table per two of the TM columns, of the model's one GELU form
    copies = re.search(r"GELU_COPIES = (\d+);", tables).group(1)
    assert int(copies) == math.ceil(design.geometry.tm / 2)
    assert re.findall(r"static const table_t (\w+)_TABLE\[GELU_COPIES\]", tables) == ["GELU"]
    assert design.capacities["gelu_forms"] == 1
    buffers = sum(bram18_blocks(n * Interfaces.BURST_BEATS, ZCU104.hp_port_bits)
                  for n in Interfaces.OUTSTANDING.values())
    assert unit_logic(design)["interfaces"].bram18 == buffers
    matmul = unit_logic(design)["matmul"]
    assert matmul.lut >= (Matmul.reduction(design) + Matmul.wiring(design)).lut > 0
