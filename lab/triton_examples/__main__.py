"""`python -m lab.triton_examples`: run Triton's example clients, unchanged, against resnet-serve and print
one line per run (pass/fail, seconds, what it waits for) and the count. `-v` prints a failing run's output."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from lab.triton_examples.harness import Result, run_all, run_one_here


def table(results: list[Result], verbose: bool) -> str:
    lines = [f"| {'example run':<90} | result | s     |", f"|{'-' * 92}|--------|-------|"]
    for r in results:
        mark = "pass" if r.passed else "FAIL"
        lines.append(f"| {r.run.id:<90} | {mark:<6} | {r.seconds:5.1f} |")
        if verbose and not r.passed:
            lines.extend("    " + line for line in r.output.splitlines())
    passed = sum(r.passed for r in results)
    lines.append(f"{passed} of {len(results)} pass")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="print each failing run's output")
    parser.add_argument("--one", type=int, default=-1, help=argparse.SUPPRESS)  # inside the namespace
    parser.add_argument("--workdir", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one >= 0:
        result = run_one_here(args.one, args.workdir / "namespace")
        print(json.dumps({"passed": result.passed, "seconds": result.seconds, "output": result.output}))
        return 0
    with tempfile.TemporaryDirectory(prefix="triton-examples-") as tmp:
        results = run_all(Path(tmp))
    print(table(results, args.verbose))
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
