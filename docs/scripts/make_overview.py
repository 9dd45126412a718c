"""Regenerate docs/images/overview.png: run `trihrge demo` and keep its overview figure.

    python docs/scripts/make_overview.py            # writes docs/images/overview.png
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from napari_trihrge.workflows.cli import main

DOCS = Path(__file__).resolve().parents[1]

if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "demo"
        code = main(["demo", "--out", str(out), "--quiet"])
        if code:
            sys.exit(code)
        target = DOCS / "images" / "overview.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / "overview.png", target)
        shutil.copyfile(out / "summary.json", DOCS / "images" / "overview_summary.json")
        print(f"wrote {target}")
