import pytest

from circuitlab.core.errors import CircuitlabError
from circuitlab.core.runs import RunDir


def test_reopening_with_the_same_config_resumes(tmp_path):
    run = RunDir.open(tmp_path / "r", {"lr": 0.1, "sizes": (1, 2)})
    run.log_metrics(step=1, loss=2.0)
    run.mark_done("unit-a")
    again = RunDir.open(tmp_path / "r", {"lr": 0.1, "sizes": (1, 2)})
    assert again.is_done("unit-a") and not again.is_done("unit-b")
    assert again.metrics() == [{"step": 1, "loss": 2.0}]
    assert again.config == {"lr": 0.1, "sizes": [1, 2]}


def test_reopening_with_another_config_is_refused(tmp_path):
    RunDir.open(tmp_path / "r", {"lr": 0.1})
    with pytest.raises(CircuitlabError, match="differs in: lr"):
        RunDir.open(tmp_path / "r", {"lr": 0.2})


def test_a_run_recorded_before_a_field_existed_reopens_at_its_default(tmp_path):
    RunDir.open(tmp_path / "r", {"lr": 0.1})  # an older version had no `values` field
    defaults = {"lr": 0.01, "values": 250}
    RunDir.open(tmp_path / "r", {"lr": 0.1, "values": 250}, defaults)
    with pytest.raises(CircuitlabError, match="differs in: values"):
        RunDir.open(tmp_path / "r", {"lr": 0.1, "values": 50}, defaults)
    with pytest.raises(CircuitlabError, match="differs in: lr"):  # recorded fields still count
        RunDir.open(tmp_path / "r", {"lr": 0.01, "values": 250}, defaults)


def test_results_and_report_round_trip(tmp_path):
    run = RunDir.open(tmp_path / "r", {})
    run.write_results({"acc": 0.5})
    assert run.results() == {"acc": 0.5}
    assert run.write_report("# hi\n").read_text() == "# hi\n"


def test_trim_metrics_drops_the_steps_a_resumed_run_logs_again(tmp_path):
    run = RunDir.open(tmp_path / "r", {"lr": 0.1})
    for step in (10, 20, 30):
        run.log_metrics(step=step, loss=1.0)
    run.log_metrics(step=20, eval_accuracy=0.5)  # an eval point at the checkpoint step stays
    run.trim_metrics(20)
    assert [(r["step"], "loss" in r) for r in run.metrics()] == [
        (10, True), (20, True), (20, False)
    ]
    RunDir(tmp_path / "empty").trim_metrics(5)  # no metrics yet: nothing to do


def test_stages_run_once_and_keep_the_times_of_earlier_invocations(tmp_path):
    ran = []
    run = RunDir.open(tmp_path / "r", {"lr": 0.1})
    assert run.run_stage("a", lambda: ran.append("a"))
    with pytest.raises(RuntimeError):  # a failed stage records no time and is not done
        run.run_stage("b", lambda: (_ for _ in ()).throw(RuntimeError("killed")))
    assert set(run.timings()) == {"a"} and not run.is_done("b")
    again = RunDir.open(tmp_path / "r", {"lr": 0.1})  # the next invocation
    assert not again.run_stage("a", lambda: ran.append("a again"))
    assert again.run_stage("b", lambda: ran.append("b"))
    assert ran == ["a", "b"]
    assert list(again.timings()) == ["a", "b"]
    assert all(isinstance(s, float) and s >= 0 for s in again.timings().values())
