"""Which modules a CLI invocation imports (for the tests that keep light commands light)."""

from __future__ import annotations

import subprocess
import sys


def imports_torch(*args: str) -> bool:
    """Whether `circuitlab ARGS...`, run in a fresh interpreter, imported torch."""
    code = (
        "import sys\nfrom typer.testing import CliRunner\nfrom circuitlab.cli import app\n"
        f"result = CliRunner().invoke(app, {list(args)!r})\n"
        "assert result.exit_code == 0, result.output\nprint('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip() == "True"
