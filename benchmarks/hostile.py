"""Issue 12's categories rerun: code-running pickles, malformed inputs, fuzzed files.

Each case (tests/hostile_cases.py) runs in a forked child that scans a folder holding it, as
`ckpttui inspect` does; its CPU time and peak memory are measured from the child's rusage (CPU
time, not wall time: the machine is shared). A case passes when the outcome is safe (see
hostile_cases.check), it costs at most 10 CPU seconds (building the case included), and, for
files under 1 MB, the child grows by at most 256 MB. A child still running after 120 s wall time
is killed and counted as a hang. Then the seeded fuzzer runs for a while.

    .venv/bin/python benchmarks/hostile.py [--fuzz-seconds 120] [--no-big]
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from hostile_cases import Case, all_cases, check

TIME_LIMIT = 10  # CPU seconds
WALL_LIMIT = 120
MEMORY_LIMIT_MB = 256


def run_case(case: Case) -> tuple[str | None, float, float, int]:
    """(problem or None, seconds, child peak RSS growth in MB, bytes written)."""
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d) / "scan"
        folder.mkdir()
        marker = Path(d) / "pwned"
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            os.close(r)
            signal.alarm(WALL_LIMIT)
            resource.setrlimit(resource.RLIMIT_CPU, (TIME_LIMIT + 1, TIME_LIMIT + 2))
            try:
                problem = check(case, folder, marker) or ""
            except BaseException as exc:
                problem = f"exception escaped: {type(exc).__name__}: {exc}"[:300]
            size = sum(p.stat().st_size for p in (folder / "case").rglob("*") if p.is_file())
            os.write(w, f"{size}\n{problem}".encode())
            os._exit(0)
        os.close(w)
        _, status, usage = os.wait4(pid, 0)
        seconds = usage.ru_utime + usage.ru_stime
        out = b""
        while chunk := os.read(r, 65536):
            out += chunk
        os.close(r)
    grown = max(0.0, (usage.ru_maxrss - base) / 1024)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return (
            ("hang (over 10 s)" if sig == signal.SIGALRM else f"killed by {sig}"),
            seconds,
            grown,
            0,
        )
    size_text, _, problem = out.decode().partition("\n")
    size = int(size_text or 0)
    if not problem and seconds > TIME_LIMIT:
        problem = f"took {seconds:.1f} CPU seconds"
    if not problem and size < 1 << 20 and grown > MEMORY_LIMIT_MB:
        problem = f"a {size}-byte input cost {grown:.0f} MB"
    return problem or None, seconds, grown, size


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fuzz-seconds", type=float, default=120)
    parser.add_argument("--no-big", action="store_true", help="skip the 20 MB cases")
    args = parser.parse_args()
    import ckpttui.inventory
    import ckpttui.layouts.known_calls
    import ckpttui.textreport  # noqa: F401

    tried: Counter[str] = Counter()
    passed: Counter[str] = Counter()
    slowest = (0.0, "")
    biggest = (0.0, "")
    biggest_small = (0.0, "")
    for case in all_cases():
        if args.no_big and case.big:
            continue
        category = "code-running pickles" if case.kind == "run" else "malformed inputs"
        problem, seconds, grown, size = run_case(case)
        if size < 1 << 20:
            biggest_small = max(biggest_small, (grown, case.name))
        tried[category] += 1
        slowest = max(slowest, (seconds, case.name))
        biggest = max(biggest, (grown, case.name))
        if problem is None:
            passed[category] += 1
        else:
            print(f"FAIL {case.name}: {problem}")
    from fuzz_readers import fuzz

    if args.fuzz_seconds > 0:
        result = fuzz(seconds=args.fuzz_seconds, seed=int(time.time()))
        tried["fuzzed files"] += result["tried"]
        passed["fuzzed files"] += result["tried"] - len(result["problems"])
        for problem, (target, _) in result["problems"].items():
            print(f"FAIL fuzz {target}: {problem}")
    print(f"{'category':<24}{'tried':>8}{'passed':>8}")
    for category in tried:
        print(f"{category:<24}{tried[category]:>8}{passed[category]:>8}")
    print(f"slowest case: {slowest[1]} ({slowest[0]:.1f} CPU s)")
    print(f"most memory: {biggest[1]} (+{biggest[0]:.0f} MB)")
    print(f"most memory, files under 1 MB: {biggest_small[1]} (+{biggest_small[0]:.0f} MB)")
    return 0 if tried == passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
