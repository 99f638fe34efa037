"""`m3c report` and `m3c simulate`: estimates of a compiled project, and the memory-system
simulation on real routing."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from m3c.commands.registry import command
from m3c.errors import OutputError
from m3c.frontend.validate import load_json, load_project, positive_float, positive_int
from m3c.hw.resources import KINDS


def _configure_report(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("project", help="project directory made by `m3c compile`")
    parser.add_argument("--power", type=positive_float, default=None,
                        help="board power in W for the energy figure (default: the target's)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--trace", action="store_true",
                        help="also run the traced C-simulation of one test vector and write "
                             "report/trace.json (DDR beats and array cycles per call, traced "
                             "beside estimated)")


@command("report", "estimate resources, latency, FLOPs and energy of a compiled project",
         _configure_report)
def run_report(args: argparse.Namespace) -> int:
    report, written = write_report_atomic(args.project, power_w=args.power,
                                          plots=not args.no_plots)
    if args.trace:
        from m3c.project.trace import trace_project, write_trace

        rows = trace_project(args.project)
        written.append(write_trace(args.project, rows))
        if not args.quiet:
            print(_trace_summary(rows))
    if not args.quiet:
        print(summary_line(report))
        print(f"wrote {', '.join(str(path) for path in written)}")
    return 0


def _trace_summary(rows: list[dict]) -> str:
    traced = sum(row["traced"]["array_cycles"] for row in rows)
    estimated = sum(row["estimated"]["array_cycles"] for row in rows)
    mismatched = [row["layer"] for row in rows if row["traced"] != row["estimated"]]
    return (f"trace: {len(rows)} calls, array cycles traced {traced} / estimated {estimated}; "
            + (f"{len(mismatched)} calls differ (first: {mismatched[0]})" if mismatched
               else "every call's DDR beats and array cycles equal the estimate"))


def _check_writable(project: Path) -> None:
    for folder in (project, project / "report"):
        if folder.is_dir() and not os.access(folder, os.W_OK | os.X_OK):
            raise OutputError(f"{folder} is read-only: the report cannot be rewritten",
                              remedy="make the project writable, or copy it somewhere writable")


def write_report_atomic(project: str | Path, power_w: float | None = None,
                        plots: bool = True) -> tuple[dict, list[Path]]:
    """`m3c.project.report.report_project`, with the project's files validated first and report/
    rebuilt beside the old one and renamed into place (a failure keeps the old report)."""
    from m3c.hw.dse import DEFAULT_BUDGET
    from m3c.project.atomic import staged_directory
    from m3c.project.report import (
        REPORT_DIR,
        SIMULATION_FILE,
        build_report,
        mean_routing,
        project_design,
        write_report,
    )

    project = Path(project)
    manifest, kernel = load_project(project)
    _check_writable(project)
    folder = project / REPORT_DIR
    simulation_path = folder / SIMULATION_FILE
    simulation = load_json(simulation_path) if simulation_path.is_file() else None
    choice = project_design(manifest, kernel, budget=manifest.get("budget", DEFAULT_BUDGET),
                            routing=mean_routing(simulation))
    report = build_report(manifest, kernel, choice, power_w, simulation)
    with staged_directory(folder, force=True) as staging:
        written = write_report(staging, report, plots)  # into staging/report/
        for path in (staging / REPORT_DIR).iterdir():
            os.rename(path, staging / path.name)
        (staging / REPORT_DIR).rmdir()
        if simulation_path.is_file():  # the replay `m3c simulate` saved stays with the report
            (staging / SIMULATION_FILE).write_bytes(simulation_path.read_bytes())
    return report, [folder / path.name for path in written]


def summary_line(report: dict) -> str:
    used = report["resources"]["utilisation"]
    tiles = report["tiles"]
    return (f"{report['target']}: {report['latency']['ms']:.3f} ms/inference, "
            f"{report['energy']['joules_per_inference']:.4f} J, tiles "
            f"{tiles['tile_in']}x{tiles['tile_out']}, "
            + (f"multipliers on DSPs: {'/'.join(tiles['dsp_multipliers'])}, "
               if tiles.get("dsp_multipliers") else "")
            + ", ".join(f"{kind} {100 * used[kind]:.0f}%" for kind in KINDS))


def _images(text: str) -> int | list[str]:
    return int(text) if text.isdigit() else text.split(",")


def _configure_simulate(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("project", help="project directory made by `m3c compile`")
    parser.add_argument("--images", type=_images, default=4,
                        help="a number of generated images, or comma-separated pictures, "
                             "folders of them or .npy batches (as m3c evaluate reads them)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic scenes")
    parser.add_argument("--slots", type=positive_int, default=2,
                        help="experts the token-major cache holds (default: the two "
                             "expert-major slots, the same on-chip memory)")


@command("simulate", "replay real routing through naive, cache-based and expert-major MoE "
         "designs", _configure_simulate)
def run_simulate(args: argparse.Namespace) -> int:
    from m3c.check.memsim import simulate_project

    load_project(args.project)
    _check_writable(Path(args.project))
    simulation = simulate_project(args.project, args.images, args.seed, args.slots)
    write_report_atomic(args.project)
    if not args.quiet:
        print(format_simulation(simulation))
    return 0


def format_simulation(simulation: dict) -> str:
    rows = [f"{simulation['inputs']} inferences of real routing, cache of "
            f"{simulation['slots']} experts",
            f"{'design':<13} {'on-chip w.B':>12} {'on-chip B':>12} {'DDR B':>12} "
            f"{'stall cyc':>12} {'ms':>10} {'vs EM':>7}"]
    for name, d in simulation["designs"].items():
        onchip = d["onchip_bytes"]
        rows.append(f"{name:<13} {onchip['weights']:>12} {onchip['total']:>12} "
                    f"{d['ddr_bytes']:>12.0f} {d['stall_cycles']:>12.0f} {d['ms']:>10.3f} "
                    f"{d['latency_vs_expert_major']:>6.2f}x")
    return "\n".join(rows)
