"""The README's test command is the one CI runs, and it installs what the SpatialData tests need."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_test_command() -> str:
    readme = (ROOT / "README.md").read_text()
    commands = [line for block in re.findall(r"```bash\n(.*?)```", readme, flags=re.S)
                for line in block.splitlines() if "python -m pytest" in line]
    assert len(commands) == 1, commands
    return commands[0].strip()


def test_ci_runs_the_readme_test_command():
    command = _readme_test_command()
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert command in ci_lines
    # the SpatialData and napari-spatialdata tests need the extra (they skip without it)
    extras = re.search(r'pip install -e "\.\[([^\]]*)\]"', command).group(1).split(",")
    assert {"testing", "spatialdata"} <= set(extras)
