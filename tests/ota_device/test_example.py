"""examples/ota_walkthrough.py runs as documented."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "ota_walkthrough.py"

pytestmark = pytest.mark.slow


def test_walkthrough(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), "--state-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert out.count("SUCCEEDED state=COMMITTED") == 3
    assert "robot-4: FAILED    state=FAILED reason=HEALTH_CHECK_FAILED" in out
    assert "robot-1: 2.0.0 (slot b)" in out
    assert "robot-4: 1.0.0 (slot a)" in out
