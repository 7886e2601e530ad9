"""ruff and mypy (strict) stay clean: the suite fails when they do not."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_and_mypy_clean() -> None:
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "typecheck")], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
