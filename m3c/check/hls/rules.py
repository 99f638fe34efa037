"""From the walk to verdicts: the instances of every non-inlined function, and per pipelined
loop the II its accesses, recurrences, dividers and tables allow."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from m3c.check.hls.arrays import ArrayInfo, banks_of, port_bound
from m3c.check.hls.walker import Access, Iteration

RMW_II = 2  # a RAM read-modify-write: read latency, then the write (more with logic between)
DIVIDER_BITS = 32  # the width assumed for a divide whose operands' types are not known


@dataclass(frozen=True)
class Issue:
    """Something in a pipelined loop that keeps it from its target II (or that the checker
    cannot decide: kind "unknown", forced_ii None)."""

    function: str
    loop: str
    kind: str  # ports, table, runtime-bank-write, recurrence, divider, wide-multiply, unknown
    subject: str  # the array or the operation
    forced_ii: int | None
    detail: str


@dataclass(frozen=True)
class LoopVerdict:
    function: str
    loop: str
    context: str  # the non-inlined function it runs in
    target_ii: int
    bound_ii: int | None  # None: not decidable statically
    reasons: tuple[str, ...]


def instance_counts(calls: dict[str, set[str]], top: str) -> dict[str, int]:
    """Instances of every non-inlined function: one per instance of each distinct non-inlined
    function calling it (calls in one function share an instance)."""
    callers: dict[str, set[str]] = defaultdict(set)
    for caller, callees in calls.items():
        for callee in callees:
            callers[callee].add(caller)
    counts: dict[str, int] = {top: 1}

    def count(name: str, path: tuple[str, ...]) -> int:
        if name not in counts:
            if name in path:  # recursion: not synthesisable, counted once
                return 1
            counts[name] = sum(count(caller, path + (name,)) for caller in callers[name])
        return counts[name]

    for name in calls:
        count(name, ())
    return counts


def loop_issues(iteration: Iteration) -> list[Issue]:
    found: list[Issue] = []
    by_array: dict[str, list[Access]] = defaultdict(list)
    for access in iteration.accesses.values():
        by_array[access.array.key].append(access)
    for accesses in by_array.values():
        found += _array_issues(iteration, accesses)
    found += _arithmetic_issues(iteration)
    found += [Issue(iteration.function, iteration.loop, "unknown", "analysis", None, what)
              for what in dict.fromkeys(iteration.unknowns)]
    return found


def verdict(iteration: Iteration, issues: list[Issue]) -> LoopVerdict:
    undecided = any(issue.forced_ii is None for issue in issues)
    bound = max([iteration.target_ii] + [i.forced_ii for i in issues if i.forced_ii])
    reasons = tuple(f"{i.kind} {i.subject}" + (f" (II {i.forced_ii})" if i.forced_ii else "")
                    for i in issues)
    return LoopVerdict(iteration.function, iteration.loop, iteration.context,
                       iteration.target_ii, None if undecided else bound, reasons)


def _array_issues(iteration: Iteration, accesses: list[Access]) -> list[Issue]:
    array = accesses[0].array
    reads = [a for a in accesses if not a.write]
    writes = [a for a in accesses if a.write]
    issues = []
    roaming = [a for a in writes if array.partition and _roams(array, a)]
    if array.registers:
        if roaming:
            issues.append(_issue(iteration, "runtime-bank-write", array, 1,
                                 f"{len(roaming)} write(s) at an element chosen at run time "
                                 f"(first {roaming[0].where}): a decoder onto every register"))
        return issues
    bound, detail = _port_bound(array, reads, writes)
    if bound > iteration.target_ii:
        kind = "table" if array.rom else "ports"
        issues.append(_issue(iteration, kind, array, bound, detail))
    if roaming:
        issues.append(_issue(iteration, "runtime-bank-write", array, bound,
                             f"{len(roaming)} write(s) into a bank chosen at run time (first "
                             f"{roaming[0].where}): each occupies a port of every bank"))
    if reads and writes and RMW_II > iteration.target_ii and not array.rom and \
            not array.interface and array.key not in iteration.local_arrays and \
            not _covered(iteration, array):
        issues.append(_issue(iteration, "recurrence", array, RMW_II,
                             f"read at {reads[0].where} and written at {writes[0].where} at "
                             "run-time indices with no `dependence` pragma: the next "
                             "iteration's read waits for this one's write"))
    return issues


def _issue(iteration: Iteration, kind: str, array: ArrayInfo, forced: int | None,
           detail: str) -> Issue:
    return Issue(iteration.function, iteration.loop, kind, array.name, forced, detail)


def _coordinate(array: ArrayInfo, access: Access) -> dict[int, list[int] | None]:
    """Per partitioned dimension, the banks the access can reach (None: all)."""
    return {dim: array.banks_at(dim, access.index[dim - 1] if dim - 1 < len(access.index)
                                else None) for dim in array.bank_counts()}


def _roams(array: ArrayInfo, access: Access) -> bool:
    """The access reaches more than one bank: which one is decided at run time."""
    return any(banks is None or len(banks) > 1 for banks in _coordinate(array, access).values())


def _port_bound(array: ArrayInfo, reads: list[Access], writes: list[Access]) -> tuple[int, str]:
    """The II the busiest bank allows, and what it serves per iteration."""
    per_bank: dict[tuple[int, ...], list[int]] = defaultdict(lambda: [0, 0])
    for access in reads + writes:
        for bank in banks_of(array, _coordinate(array, access)):
            per_bank[bank][1 if access.write else 0] += 1
    bank, (read_count, write_count) = max(
        per_bank.items(), key=lambda item: port_bound(array.ports, *item[1]))
    bound = port_bound(array.ports, read_count, write_count)
    where = f" bank {list(bank)}" if array.partition else ""
    return bound, (f"{read_count} read(s) + {write_count} write(s) per iteration on{where} "
                   f"({array.port_text}); first at {(reads or writes)[0].where}")


def _covered(iteration: Iteration, array: ArrayInfo) -> bool:
    """A `dependence` pragma says there is no loop-carried dependence on the array, or one at
    a distance of at least the read-modify-write latency."""
    pragma = iteration.covered.get(array.key)
    if pragma is None or pragma.options.get("type", "inter").lower() != "inter":
        return False
    distance = pragma.options.get("distance", "")
    return "false" in pragma.flags or (distance.isdigit() and int(distance) >= RMW_II)


def _arithmetic_issues(iteration: Iteration) -> list[Issue]:
    issues = []
    for value, quote in iteration.divisions.values():
        bits = value.width or DIVIDER_BITS
        recurrent = iteration.divider_recurrence
        forced = bits if recurrent else 1
        path = ("whose result feeds a loop-carried variable: the next iteration waits for it"
                if recurrent else "pipelined, but a divider circuit in the loop")
        issues.append(Issue(iteration.function, iteration.loop, "divider", quote, forced,
                            f"divisor known only at run time: a {bits}-bit divider "
                            f"(latency ~{bits} cycles) {path}"))
    if iteration.wide_multiplies:
        quotes = [quote for _, quote in iteration.wide_multiplies.values()]
        issues.append(Issue(iteration.function, iteration.loop, "wide-multiply",
                            f"{len(quotes)} 64-bit multiplies", 1,
                            f"long long products per iteration, e.g. {quotes[0]}"))
    return issues
