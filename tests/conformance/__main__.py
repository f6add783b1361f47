"""`python -m tests.conformance [--test NAME...] [--timeout S] [--strict|--upstream]`: the conformance report.

One line per test (`PASS/FAIL name  k/n cases`, with the failure reasons indented under a failed test),
then the case totals: the other mode's total on the line before last, and alone on the last line
`N passed, M failed` for the mode reported (strict unless --upstream). Both modes are judged from the
same requests either way. Exit status 0 when every case passes in the reported mode.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from tests.conformance.harness import Options, TestResult, run_test
from tests.conformance.judge import STRICT, UPSTREAM
from tests.conformance.manifests import CASES_FILE, find_test, load_corpus


def _indent(text: str, prefix: str = "    ") -> str:
    return textwrap.indent(text, prefix)


def format_test(result: TestResult, mode: str) -> str:
    total = len(result.cases)
    ok = result.count(mode)
    status = "PASS" if ok == total else "FAIL"
    line = f"{status} {result.name}  {ok}/{total} cases"
    if ok == total:
        return line
    return line + "\n" + _indent(result.describe_failures(mode))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.conformance", description=__doc__.split("\n")[0])
    parser.add_argument("--test", nargs="+", action="extend", default=[], metavar="NAME",
                        help="run only these tests (default: all)")
    parser.add_argument("--timeout", type=float, default=None, metavar="S",
                        help="max time to consistency per single case (default: the corpus value, 30 s)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--strict", dest="mode", action="store_const", const=STRICT,
                      help="report strict mode (the default)")
    mode.add_argument("--upstream", dest="mode", action="store_const", const=UPSTREAM,
                      help="report upstream mode (only the fields upstream enforces)")
    parser.add_argument("--requests", type=int, default=None, metavar="N",
                        help="requests per distribution attempt (default: the corpus value, 500)")
    parser.add_argument("--attempts", type=int, default=None, metavar="N",
                        help="distribution attempts (default: the corpus value, 10)")
    parser.add_argument("--sequential", action="store_true",
                        help="run the cases of a test one at a time, as the pytest run does")
    parser.add_argument("--jobs", type=int, default=1, metavar="N", help="tests run at once, each on its own mesh")
    parser.add_argument("--cases", type=Path, default=CASES_FILE, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    reported = args.mode or STRICT
    other = UPSTREAM if reported == STRICT else STRICT

    if not args.cases.exists():
        print(f"error: {args.cases} is absent (the shared/ reference data is needed)", file=sys.stderr)
        return 2
    corpus = load_corpus(args.cases)
    names = args.test or [t["name"] for t in corpus["tests"]]
    for name in names:
        try:
            find_test(corpus, name)
        except KeyError as exc:
            print(f"error: {exc.args[0]}", file=sys.stderr)
            return 2
    options = Options(timeout=args.timeout, total_requests=args.requests, max_attempts=args.attempts,
                      parallel_cases=not args.sequential)

    started = time.monotonic()
    results: list[TestResult] = []
    with tempfile.TemporaryDirectory(prefix="waypost-conformance-") as tmp:
        with concurrent.futures.ThreadPoolExecutor(max(1, args.jobs)) as pool:
            for result in pool.map(lambda n: run_test(corpus, n, options, Path(tmp)), names):
                results.append(result)
                print(format_test(result, reported), flush=True)
    cases = [c for r in results for c in r.cases]

    def totals(mode: str) -> str:
        passed = sum(c.passed(mode) for c in cases)
        return f"{passed} passed, {len(cases) - passed} failed"

    sys.stdout.flush()
    print(f"({time.monotonic() - started:.1f}s, {len(results)} tests)", file=sys.stderr, flush=True)
    print(f"{other} mode: {totals(other)}")
    print(totals(reported))
    return 0 if all(c.passed(reported) for c in cases) else 1


if __name__ == "__main__":
    sys.exit(main())
