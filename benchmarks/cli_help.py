"""Seconds to print each help page of the plain commands (and ``xraydiff --help``), as a user waits for it: a
fresh process each time, Python's bytecode cache warm (one untimed call first), the median of ``--repeats``.
Target: every page under 1.5 s on a 2-core CPU (Lightning, torch and MONAI are not imported to print them).

    python -m benchmarks.cli_help [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def seconds(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cli", *argv, "--help"], cwd=REPO, capture_output=True, check=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"{'command':<34} median s (of {args.repeats})   max s")
    slowest = 0.0
    sys.path.insert(0, str(REPO))
    from cli import help_pages

    for argv in help_pages():
        seconds(argv)  # bytecode cache warm
        times = [seconds(argv) for _ in range(args.repeats)]
        slowest = max(slowest, statistics.median(times))
        print(f"{' '.join(['xraydiff', *argv, '--help']):<34} {statistics.median(times):8.2f}   {max(times):8.2f}")
    print(f"slowest median: {slowest:.2f} s ({'under' if slowest < 1.5 else 'OVER'} the 1.5 s target)")


if __name__ == "__main__":
    main()
