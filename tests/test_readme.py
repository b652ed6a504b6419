"""The README's two set-up commands: CI runs exactly the second one."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    return re.findall(r"```sh\n(.+?)\n```", (ROOT / "README.md").read_text())


def test_ci_runs_the_readme_test_command():
    commands = _readme_commands()
    ci_lines = [line for line in (ROOT / ".ci" / "run").read_text().splitlines()
                if line and not line.startswith(("#", "set ", "cd "))]
    assert ci_lines == [commands[1]]


def test_readme_first_command_installs_and_runs_the_demo():
    first = _readme_commands()[0]
    assert "pip install" in first and first.endswith("sct-node demo")
    assert "--index-url https://download.pytorch.org/whl/cpu" in first  # a lean CPU torch
