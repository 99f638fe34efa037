"""`m3c report` and `m3c simulate`: estimates of a compiled project, and the memory-system
simulation on real routing."""

from __future__ import annotations

import argparse

from m3c.cli import command
from m3c.estimate import KINDS


def _configure_report(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("project", help="project directory made by `m3c compile`")
    parser.add_argument("--power", type=float, default=None,
                        help="board power in W for the energy figure (default: the target's)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--trace", action="store_true",
                        help="also run the traced C-simulation of one test vector and write "
                             "report/trace.json (DDR beats and array cycles per call, traced "
                             "beside estimated)")


@command("report", "estimate resources, latency, FLOPs and energy of a compiled project",
         _configure_report)
def run_report(args: argparse.Namespace) -> int:
    from m3c.report import report_project

    report, written = report_project(args.project, power_w=args.power, plots=not args.no_plots)
    if args.trace:
        from m3c.trace import trace_project, write_trace

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


def summary_line(report: dict) -> str:
    used = report["resources"]["utilisation"]
    tiles = report["tiles"]
    return (f"{report['target']}: {report['latency']['ms']:.3f} ms/inference, "
            f"{report['energy']['joules_per_inference']:.4f} J, tiles "
            f"{tiles['tile_in']}x{tiles['tile_out']}, "
            + ", ".join(f"{kind} {100 * used[kind]:.0f}%" for kind in KINDS))


def _images(text: str) -> int | list[str]:
    return int(text) if text.isdigit() else text.split(",")


def _configure_simulate(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("project", help="project directory made by `m3c compile`")
    parser.add_argument("--images", type=_images, default=4,
                        help="a number of synthetic scenes, or comma-separated .npy images")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic scenes")
    parser.add_argument("--slots", type=int, default=2,
                        help="experts the token-major cache holds (default: the two "
                             "expert-major slots, the same on-chip memory)")


@command("simulate", "replay real routing through naive, cache-based and expert-major MoE "
         "designs", _configure_simulate)
def run_simulate(args: argparse.Namespace) -> int:
    from m3c.memsim import simulate_project
    from m3c.report import report_project

    simulation = simulate_project(args.project, args.images, args.seed, args.slots)
    report_project(args.project)
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
