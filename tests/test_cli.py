"""The CLI through its real entry point (`python -m circuitlab`), as a user runs it."""

import json
import subprocess
import sys
from typing import Any

import pytest


def run(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "circuitlab", *args], capture_output=True, text=True, cwd=cwd
    )


def test_help_lists_the_three_systems_and_their_commands():
    result = run("--help")
    assert result.returncode == 0
    for name in ("cot", "circuits", "analog", "demo", "report"):
        assert name in result.stdout
    expected = {"cot": ("data", "train", "eval", "sweep"),
                "circuits": ("check", "reference", "discover", "evaluate", "sweep"),
                "analog": ("nodes", "distill", "train", "eval", "run")}  # fmt: skip
    for system, commands in expected.items():
        sub = run(system, "--help")
        assert sub.returncode == 0
        for command in commands:
            assert command in sub.stdout


def test_cot_data_writes_files_and_is_deterministic(tmp_path):
    for name in ("a", "b"):
        result = run(
            "cot",
            "data",
            "--task",
            "arithmetic",
            "--size",
            "4",
            "--format",
            "cot",
            "--num",
            "200",
            "--seed",
            "3",
            "--out",
            str(tmp_path / f"{name}.jsonl"),
        )
        assert result.returncode == 0, result.stderr
    first = (tmp_path / "a.jsonl").read_text().splitlines()
    assert first == (tmp_path / "b.jsonl").read_text().splitlines()
    record = json.loads(first[0])
    assert {"task", "size", "question", "chain", "answer", "text"} <= record.keys()
    assert len((tmp_path / "a.test.jsonl").read_text().splitlines()) == 20
    assert json.loads((tmp_path / "a.stats.json").read_text())["num_train"] == 200


def test_cot_data_takes_the_lis_number_range(tmp_path):
    out = tmp_path / "l.jsonl"
    result = run("cot", "data", "--task", "lis", "--size", "8", "--values", "20",
                 "--num", "300", "--out", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr
    numbers = [int(x) for line in out.read_text().splitlines()
               for x in json.loads(line)["question"].split()]  # fmt: skip
    assert min(numbers) == 9 and max(numbers) == 19
    assert json.loads((tmp_path / "l.stats.json").read_text())["values"] == 20


def test_cot_train_checks_the_lis_number_range_before_training(tmp_path):
    result = run("cot", "train", "--task", "lis", "--size", "8", "--values", "16",
                 "--out", str(tmp_path / "run"))  # fmt: skip
    assert result.returncode == 2
    assert "LIS values 16 do not fit size 8" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--task", "sorting", "--size", "3"], "unknown task"),
        (["--task", "lis", "--size", "0"], "out of range"),
        (["--task", "lis", "--size", "8", "--values", "16"], "do not fit size 8"),
        (["--task", "equation", "--size", "3", "--p", "9"], "not prime"),
        (["--task", "arithmetic", "--size", "3", "--p", "1000003"], "above 1000"),
        (["--task", "ed", "--size", "12", "--num", "0"], "at least one"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, args, message):
    out = tmp_path / "d.jsonl"
    result = run("cot", "data", *args, "--out", str(out))
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_unwritable_output_is_exit_2_and_leaves_nothing(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = run(
        "cot",
        "data",
        "--task",
        "lis",
        "--size",
        "10",
        "--num",
        "10",
        "--out",
        str(blocker / "d.jsonl"),
    )
    assert result.returncode == 2 and "cannot write" in result.stderr
    assert "Traceback" not in result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


def test_demo_writes_a_report_and_resumes(tmp_path):
    demo = tmp_path / "demo"
    args = ("demo", "--out", str(demo), "--num", "100", "--stage", "cot-data")
    result = run(*args)
    assert result.returncode == 0, result.stderr
    stage_report = (demo / "cot-data" / "report.md").read_text()
    assert stage_report.count("| cot |") + stage_report.count("| direct |") == 8
    assert "| lis | 50 |" in (demo / "report.md").read_text()
    assert "<html" in (demo / "report.html").read_text()
    data = demo / "cot-data" / "cot-data"
    assert (data / "lis-50.direct.jsonl").exists()
    results = json.loads((demo / "cot-data" / "results.json").read_text())
    assert {r["task"] for r in results["cot_data"]} == {"arithmetic", "equation", "lis", "ed"}
    stamp = (data / "lis-50.cot.jsonl").stat().st_mtime_ns
    assert run(*args).returncode == 0
    assert (data / "lis-50.cot.jsonl").stat().st_mtime_ns == stamp
    # the rerun did no work, yet the summary keeps the first run's stage time
    combined = (demo / "report.md").read_text()
    assert "| cot-data |" in combined and "Caveats of the small defaults" in combined
    assert set(json.loads((demo / "timings.json").read_text())) == {"cot-data"}
    bad = run("demo", "--out", str(demo), "--stage", "nope")
    assert bad.returncode == 2 and "unknown demo stage" in bad.stderr


def test_report_rebuilds_one_html_page_from_run_directories(tmp_path):
    import base64

    png = base64.b64decode(  # a 1x1 PNG
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC"
    )
    for name, body in [("cot", "| n | acc |\n| --- | ---: |\n| 3 | 0.987 |\n\n![acc](acc.png)"),
                       ("circuits", "![roc](roc.png)")]:  # fmt: skip
        (tmp_path / name).mkdir()
        (tmp_path / name / "report.md").write_text(f"# {name} run\n\n{body}\n")
    (tmp_path / "cot" / "acc.png").write_bytes(png)

    result = run("report", str(tmp_path / "cot"), str(tmp_path / "circuits"),
                 "--out", str(tmp_path / "site" / "index.html"))  # fmt: skip
    assert result.returncode == 0, result.stderr
    page = (tmp_path / "site" / "index.html").read_text()
    assert "<h2>cot run</h2>" in page and "<h2>circuits run</h2>" in page
    assert '<td class="r">0.987</td>' in page and "data:image/png;base64," in page
    # the missing plot is a warning and a box, not an error
    assert "warning:" in result.stderr and "missing plot: roc.png" in result.stderr
    assert "missing plot: roc.png" in page
    combined = (tmp_path / "site" / "index.md").read_text()
    assert "## cot run" in combined and "![acc](../cot/acc.png)" in combined

    # default output: the first run directory's report.html; its report.md stays as it was
    result = run("report", str(tmp_path / "cot"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "cot" / "report.html").exists()
    assert (tmp_path / "cot" / "report.md").read_text().startswith("# cot run\n")


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: None, "no such run directory"),
        (lambda d: d.mkdir(), "has no report.md"),
    ],
)
def test_report_of_a_bad_run_directory_is_one_line_exit_2(tmp_path, make, message):
    make(tmp_path / "run")
    result = run("report", str(tmp_path / "run"))
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.glob("**/*.html"))


def test_help_lists_the_report_command():
    result = run("--help")
    assert result.returncode == 0 and "report" in result.stdout


def test_every_help_text_shows_its_bracketed_words():
    """Help is rendered with rich markup, where an unescaped [word] is a style tag: it
    vanishes from the help (or, for [/word], crashes --help). Walk every command."""
    import typer
    from rich.markup import RE_TAGS
    from typer.testing import CliRunner

    from circuitlab.cli import app

    root = typer.main.get_command(app)
    commands: list[list[str]] = []
    tags: list[str] = []

    def context(command: Any, parent: Any, name: str) -> Any:
        return command.context_class(command, parent=parent, info_name=name)

    def walk(command: Any, path: list[str], ctx: Any) -> None:
        commands.append(path)
        texts = [command.help, *(getattr(p, "help", None) for p in command.params)]
        for text in filter(None, texts):
            for match in RE_TAGS.finditer(text):
                if len(match.group(2)) % 2 == 0:  # an even run of backslashes: not escaped
                    tags.append(f"{' '.join(path)}: {match.group(0)}")
        if hasattr(command, "list_commands"):  # a group (typer's own click, not click's)
            for name in list(command.list_commands(ctx)):
                sub = command.get_command(ctx, name)
                assert sub is not None
                walk(sub, [*path, name], context(sub, ctx, name))

    walk(root, [], context(root, None, "circuitlab"))
    assert tags == []
    assert len(commands) > 15
    runner = CliRunner()
    for path in commands:
        result = runner.invoke(app, [*path, "--help"], terminal_width=200)
        assert result.exit_code == 0, (path, result.output)
    shown = run("analog", "run", "--help")
    text = " ".join(shown.stdout.replace("│", " ").split())  # the text, without the box
    assert "head each step; exact). [default: cached]" in text
    assert "(a [run] table or the top level" in text
    shown = run("analog", "train", "--help")
    assert "question/answer[/reasoning]" in shown.stdout


@pytest.mark.parametrize("flag", [["--out", ""], ["--out="]], ids=["separate", "equals"])
def test_an_empty_out_is_refused_instead_of_writing_into_the_current_directory(tmp_path, flag):
    result = run("cot", "train", "--task", "arithmetic", "--size", "2", "--num", "20",
                 "--test-num", "2", "--epochs", "1", "--layers", "1", "--d-model", "8",
                 "--heads", "1", *flag, cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2
    assert "--out was given an empty value" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # before: a whole run landed in the shell's folder


@pytest.mark.parametrize("d_model", ["-4", "0"])
def test_a_non_positive_d_model_is_one_line_exit_2_and_writes_nothing(tmp_path, d_model):
    result = run("cot", "train", "--d-model", d_model, "--out", str(tmp_path / "run"))
    assert result.returncode == 2
    assert "d_model must be at least 1" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("blocked", ["d.jsonl", "d.test.jsonl", "d.stats.json"])
def test_cot_data_writes_the_whole_set_or_nothing(tmp_path, blocked):
    (tmp_path / blocked).mkdir()  # one target of the set cannot be written
    result = run("cot", "data", "--task", "arithmetic", "--size", "2", "--num", "50",
                 "--out", str(tmp_path / "d.jsonl"))  # fmt: skip
    assert result.returncode == 2
    assert f"{blocked}: it is a directory" in result.stderr and "Traceback" not in result.stderr
    assert [p.name for p in tmp_path.iterdir()] == [blocked]  # before: the test split was left
