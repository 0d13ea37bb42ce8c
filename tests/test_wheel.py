"""The package as a user installs it: a wheel, a new venv, a folder outside the repository.

The new venv sees this environment's dependencies through a .pth line (installing torch and
transformers again would only test PyPI), but circuitlab itself comes from the wheel alone:
a data file missing from the wheel fails these commands.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_wheel_has_every_data_file_and_runs_outside_the_repo(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    dist = tmp_path / "dist"
    built = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist),
         str(REPO)], capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    (wheel,) = dist.glob("circuitlab-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    package = REPO / "src" / "circuitlab"
    shipped = {
        f"circuitlab/{p.relative_to(package).as_posix()}"
        for p in package.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert shipped - names == set(), "files of src/circuitlab missing from the wheel"

    target = tmp_path / "venv"
    venv.create(target, with_pip=False)
    python = target / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()"
                           "['purelib'])"], capture_output=True, text=True, check=True)  # fmt: skip
    Path(site.stdout.strip(), "dependencies.pth").write_text(sysconfig.get_paths()["purelib"])
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
         "--no-index", "--quiet", str(wheel)], capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr[-2000:]

    work = tmp_path / "elsewhere"
    work.mkdir()
    where = subprocess.run([str(python), "-c", "import circuitlab; print(circuitlab.__file__)"],
                           capture_output=True, text=True, cwd=work, env=env)  # fmt: skip
    assert where.stdout.startswith(str(target)), where.stdout + where.stderr
    cli = target / "bin" / "circuitlab"
    demo = subprocess.run([str(cli), "demo", "--stage", "cot-data", "--num", "100", "--out",
                           "demo"], capture_output=True, text=True, cwd=work, env=env)  # fmt: skip
    assert demo.returncode == 0, demo.stderr[-2000:]
    assert (work / "demo" / "report.html").is_file()
    nodes = subprocess.run([str(cli), "analog", "nodes", "--out", "nodes"],
                           capture_output=True, text=True, cwd=work, env=env)  # fmt: skip
    assert nodes.returncode == 0, nodes.stderr[-2000:]
    summary = json.loads((work / "nodes" / "nodes_summary.json").read_text())
    assert summary["nodes"] > 100
