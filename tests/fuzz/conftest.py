"""tests/fuzz: report how many inputs each atheris run executed, after the test session."""

from __future__ import annotations

import pytest


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config
) -> None:
    lines = []
    for category in ("passed", "failed"):
        for report in terminalreporter.stats.get(category, []):
            properties = dict(getattr(report, "user_properties", []))
            if "fuzz_executions" in properties and getattr(report, "when", "") == "call":
                runs, seconds = properties["fuzz_executions"], properties.get("fuzz_seconds")
                rate = properties.get("fuzz_exec_per_s", 0)
                lines.append(
                    f"{report.nodeid}: {runs:,} executions ({rate:,}/s) in a {seconds} s run"
                )
    if lines:
        terminalreporter.section("atheris fuzzing")
        for line in lines:
            terminalreporter.write_line(line)
