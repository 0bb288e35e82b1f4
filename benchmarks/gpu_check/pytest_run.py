"""The `gpu`-marked tests in a pytest process of their own, bounded in time, their result read back.

The counts come from pytest's closing line ("3 passed, 1 skipped, 412 deselected in 41.20s"), the
failing tests' names from its JUnit XML; on a timeout the process group is killed and what it printed
so far is kept. pytest's exit codes: 0 all passed, 1 some failed, 5 none collected (or all deselected).
"""

from __future__ import annotations

import re
import sys
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .process import run_bounded

_COUNT = re.compile(r"(\d+) (passed|failed|skipped|deselected|xfailed|xpassed|errors?|warnings?)\b")
_CLOSING = re.compile(r"\bin [0-9.]+s\b")
TAIL_LINES = 30


@dataclass
class PytestResult:
    outcome: str  # passed | failed | skipped (every selected test skipped) | no_tests | timed_out | error
    exit_code: int | None  # None when killed at the timeout
    counts: dict[str, int] = field(default_factory=dict)
    summary: str = ""  # pytest's closing line
    failures: list[str] = field(default_factory=list)  # "file::test" of each failed or erroring test
    seconds: float = 0.0
    command: str = ""
    tail: str = ""  # the last lines it printed (the reasons of failures and skips: -rfEs)

    @property
    def ok(self) -> bool:
        return self.outcome in ("passed", "skipped")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_counts(output: str) -> tuple[dict[str, int], str]:
    """The counts in pytest's closing line, and the line itself ({} and "" when there is none)."""
    for line in reversed(output.strip().splitlines()):
        if _CLOSING.search(line) and _COUNT.search(line):
            counts = {}
            for number, word in _COUNT.findall(line):
                key = {"error": "errors", "warning": "warnings"}.get(word, word)
                counts[key] = int(number)
            return counts, line.strip(" =")
    return {}, ""


def junit_counts(junit_xml: Path) -> dict[str, int]:
    """The counts from the JUnit XML, for a run too quiet to print its closing line (-qq)."""
    if not junit_xml.is_file():
        return {}
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for suite in ET.parse(junit_xml).getroot().iter("testsuite"):
        for key in totals:
            totals[key] += int(suite.get(key, 0))
    counts = {"passed": totals["tests"] - totals["failures"] - totals["errors"] - totals["skipped"],
              "failed": totals["failures"], "errors": totals["errors"], "skipped": totals["skipped"]}
    return {key: value for key, value in counts.items() if value}


def parse_failures(junit_xml: Path) -> list[str]:
    if not junit_xml.is_file():
        return []
    failures = []
    for case in ET.parse(junit_xml).getroot().iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            module = case.get("classname", "").replace(".", "/")
            failures.append(f"{module}.py::{case.get('name', '?')}")
    return failures


def outcome_of(exit_code: int | None, counts: dict[str, int]) -> str:
    if exit_code is None:
        return "timed_out"
    if exit_code == 0:
        return "passed" if counts.get("passed", 0) or counts.get("xpassed", 0) else "skipped"
    if exit_code == 1:
        return "failed"
    if exit_code == 5:
        return "no_tests"
    return "error"


def run_pytest(tests: Path, marker: str, timeout_s: float, cwd: Path, extra: tuple[str, ...] = ()) -> PytestResult:
    with tempfile.TemporaryDirectory(prefix="outpaint-pytest-") as tmp:
        junit = Path(tmp) / "junit.xml"
        # No -q of its own: the project's addopts has one, and -qq drops the closing line.
        command = [sys.executable, "-m", "pytest", str(tests), "-m", marker, "-rfEs", "-p", "no:cacheprovider",
                   f"--junitxml={junit}", *extra]
        finished = run_bounded(command, timeout_s, cwd)
        output, exit_code = finished.output, finished.exit_code
        counts, summary = parse_counts(output or "")
        if not counts and junit_counts(junit):
            counts = junit_counts(junit)
            summary = ", ".join(f"{value} {key}" for key, value in counts.items()) + " (from the JUnit XML)"
        result = PytestResult(
            outcome=outcome_of(exit_code, counts), exit_code=exit_code, counts=counts, summary=summary,
            failures=parse_failures(junit), seconds=finished.seconds, command=" ".join(command[1:]),
            tail="\n".join((output or "").strip().splitlines()[-TAIL_LINES:]),
        )
    if exit_code is None:
        result.summary = f"timed out after {timeout_s:.0f} s" + (f" ({summary})" if summary else "")
    return result
