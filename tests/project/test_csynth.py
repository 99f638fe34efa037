"""Vitis HLS C synthesis against `m3c check` and the estimate (needs vitis_hls on PATH: marked
`vitis`, skipped here). What it confirms is what only Vitis can: the II of every pipelined loop,
the instances of every non-inlined function, and the resources, each within 10% of what m3c
says; baselines are kept per Vitis version in tests/baselines/csynth/<version>/<model>.json
(as hls4ml keeps its synthesis baselines): `M3C_RECORD_CSYNTH=1` writes a missing one.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

pytestmark = [pytest.mark.vitis,
              pytest.mark.skipif(shutil.which("vitis_hls") is None,
                                 reason="needs AMD Vitis HLS (vitis_hls) on PATH")]

BASELINES = Path(__file__).parents[1] / "baselines" / "csynth"
REPORTS = Path("hls/m3c_prj/solution1/syn/report")
RESOURCES = {"BRAM_18K": "bram18", "DSP": "dsp", "FF": "ff", "LUT": "lut", "URAM": "uram"}
MARGIN = 0.10


def _csynth(project: Path) -> dict:
    """Run `make csynth` and read its reports: per loop its II, per module its instances, the
    top's resources and the Vitis version."""
    result = subprocess.run(["make", "-C", str(project), "csynth"], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    loops: dict[str, int] = {}
    for path in sorted((project / REPORTS).glob("*csynth.xml")):
        for node in ElementTree.parse(path).getroot().iter():
            ii = node.find("PipelineII")
            if ii is not None and ii.text and ii.text.strip().isdigit():
                loops[node.tag] = max(loops.get(node.tag, 0), int(ii.text))
    top = ElementTree.parse(project / REPORTS / "csynth.xml").getroot()
    area = top.find("AreaEstimates/Resources")
    resources = {ours: int(area.findtext(theirs, "0")) for theirs, ours in RESOURCES.items()}
    instances: dict[str, int] = {}
    for module in top.iter("ModuleName"):
        instances[module.text] = instances.get(module.text, 0) + 1
    version = top.findtext("ReportVersion/Version", "unknown")
    return {"version": version, "loops": loops, "resources": resources, "instances": instances}


def _close(ours: float, theirs: float) -> bool:
    return abs(ours - theirs) <= MARGIN * max(abs(theirs), 1)


@pytest.mark.parametrize("preset", ["micro-nyud", "small-nyud"])
def test_csynth_agrees_with_the_checker_and_the_estimate(export_model, tmp_path, preset):
    from m3c.check.hls import check_project
    from m3c.project.compile import compile_model

    _, model = export_model(preset)
    project = compile_model(model, out=tmp_path / "build")
    synthesis = _csynth(project)
    check = check_project(project)
    for loop in check.loops:
        if loop.loop in synthesis["loops"] and loop.bound_ii is not None:
            assert synthesis["loops"][loop.loop] == loop.bound_ii, (loop, synthesis["loops"])
    for instance in check.instances:
        name = instance.function.rsplit("::", 1)[-1]
        if name in synthesis["instances"]:
            assert synthesis["instances"][name] == instance.count, (instance, synthesis)
    estimate = json.loads((project / "report" / "report.json").read_text())["resources"]
    for kind, used in synthesis["resources"].items():
        assert _close(estimate["used"][kind], used), (kind, estimate["used"], used)
    baseline = BASELINES / synthesis["version"] / f"{preset}.json"
    if not baseline.is_file():
        if os.environ.get("M3C_RECORD_CSYNTH"):
            baseline.parent.mkdir(parents=True, exist_ok=True)
            baseline.write_text(json.dumps(synthesis, indent=1, sort_keys=True) + "\n")
        pytest.skip(f"no baseline for Vitis {synthesis['version']}: M3C_RECORD_CSYNTH=1 "
                    "writes it")
    kept = json.loads(baseline.read_text())
    for kind, used in kept["resources"].items():
        assert _close(synthesis["resources"][kind], used), (kind, synthesis, kept)
    assert synthesis["loops"] == kept["loops"]
