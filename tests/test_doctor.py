"""`circuitlab doctor` through the real entry point: what a bug report needs, as JSON."""

from __future__ import annotations

import json
import subprocess
import sys


def test_doctor_reports_versions_device_model_browser_and_disk() -> None:
    result = subprocess.run([sys.executable, "-m", "circuitlab", "doctor", "--json"],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    facts = json.loads(result.stdout)
    import torch

    assert facts["torch"] == torch.__version__
    assert facts["circuitlab"] != "not installed"
    assert facts["device"].startswith(("cpu", "cuda", "mps"))
    assert facts["embedded model"].endswith("MiB)") and ".gguf" in facts["embedded model"]
    assert "chromium" in facts and "cache" in facts
    assert any(key.startswith("free disk at") and value.endswith("GiB")
               for key, value in facts.items())  # fmt: skip
    table = subprocess.run([sys.executable, "-m", "circuitlab", "doctor"],
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert table.returncode == 0 and "torch threads" in table.stdout
