"""Tune's status table on real (stub) Tune trials: names, columns, when it prints. No Ray cluster."""

from ray.train._internal.storage import StorageContext
from ray.tune.experiment import Trial

from cofitune_ray.tuning.status_table import TrialStatusTable, errored_lines, render, table_columns, table_rows
from cofitune_ray.tuning.trial import trial_name


def trial(node_id: str, status: str = Trial.PENDING, result: dict | None = None, **config) -> Trial:
    t = Trial("__fake", config={"node_id": node_id, "part": {}, **config}, trial_id=f"id-{node_id}", stub=True,
              trial_name_creator=trial_name)
    t.set_status(status)
    t.run_metadata.last_result = result or {}
    return t


RESULT = {"step": 10, "spec": 0.5, "vers": 0.25, "uni": 0.375, "spec/cipher/score": 0.5, "train_loss": 1.2}


def test_trials_are_named_after_their_run_or_node():
    assert str(trial("n3", run_id="n3-lr0.0001")) == "n3-lr0.0001"
    assert str(trial("n3")) == "n3"


def test_rows_are_the_trials_in_flight_with_step_and_the_objective_scores_only():
    trials = [trial("n0", Trial.TERMINATED, RESULT), trial("n1", Trial.RUNNING, RESULT), trial("n2", Trial.RUNNING),
              trial("n3")]
    uni = table_columns("uni")
    assert table_rows(trials, uni) == [["n1", "RUNNING", "10", "0.500", "0.250", "0.375"],
                                       ["n2", "RUNNING", "-", "-", "-", "-"]]
    text = render(trials, uni, elapsed_s=75)
    assert text.splitlines() == [
        "Tune: 2 running, 1 pending, 1 terminated (1m15s)",
        "  trial  status   step   Spec   Vers    Uni",
        "  n1     RUNNING    10  0.500  0.250  0.375",
        "  n2     RUNNING     -      -      -      -",
    ]
    assert "cipher" not in text and "1.2" not in text and "9223372036854775807" not in text
    assert render(trials, table_columns("spec_floor"), elapsed_s=5).splitlines()[1:] == [
        "  trial  status   step   Spec   Vers",
        "  n1     RUNNING    10  0.500  0.250",
        "  n2     RUNNING     -      -      -",
    ]


def test_printed_when_a_trial_in_flight_reached_a_new_evaluation_point_at_most_once_per_interval(capsys):
    table = TrialStatusTable("spec_floor", interval_s=0)
    trials = [trial("n1-lr0.001", Trial.PENDING)]
    assert not table.should_report(trials)  # nothing in flight
    trials[0].set_status(Trial.RUNNING)
    assert not table.should_report(trials)  # started, no evaluation point yet (its level line said it starts)
    trials[0].run_metadata.last_result = RESULT
    assert table.should_report(trials)
    table.report(trials, done=False)
    assert not table.should_report(trials)  # nothing new
    trials.append(trial("n1-lr0.003", Trial.RUNNING))
    assert not table.should_report(trials)
    trials[0].run_metadata.last_result = {**RESULT, "step": 20}
    assert table.should_report(trials)
    table.report(trials, done=False)
    printed = capsys.readouterr().out
    assert printed.count("Tune: ") == 2 and "n1-lr0.003  RUNNING     -" in printed
    slow = TrialStatusTable("spec_floor", interval_s=3600)
    slow.report(trials, done=False)
    trials[1].run_metadata.last_result = RESULT
    assert not slow.should_report(trials)  # new, but within the interval
    assert slow.should_report(trials, done=True)


def test_the_last_report_names_only_errored_trials(tmp_path, capsys):
    ok = trial("n1", Trial.TERMINATED, RESULT)
    failed = trial("n2", Trial.ERROR)
    failed.storage = StorageContext(storage_path=str(tmp_path), experiment_dir_name="tune", trial_dir_name="n2")
    assert errored_lines([ok, failed]) == [f"Tune: trial n2 errored; its error file is in {tmp_path}/tune/n2"]
    TrialStatusTable("spec_floor").report([ok], done=True)
    assert capsys.readouterr().out == ""
