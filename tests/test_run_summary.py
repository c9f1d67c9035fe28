"""A run's bookkeeping across epochs (`training.record.RunSummary`): the best and last evaluation, the
epoch's train metrics, the host state a checkpoint keeps and summary.json."""

from __future__ import annotations

import json

import pytest

from manet_jax.errors import ConfigError
from manet_jax.training.record import RunSummary
from manet_jax.training.workdir import read_summary


def results(accuracy: float, other: float = 0.5) -> dict:
    """The results of two eval sets, ranked by the first's fused accuracy."""
    return {"a/test": {"fused": {"accuracy": accuracy}}, "b/test": {"fused": {"accuracy": other}}}


def test_the_best_epoch_is_the_most_accurate_on_the_first_set_and_the_earliest_on_ties(tmp_path):
    summary = RunSummary("a/test", tmp_path / "summary.json")
    ranked = [summary.add_evaluation(epoch, 4 * epoch, results(accuracy, other=1 - accuracy))
              for epoch, accuracy in ((1, 0.5), (2, 0.75), (3, 0.75), (4, 0.25))]
    assert ranked == [0.5, 0.75, 0.75, 0.25]
    assert (summary.best, summary.last) == ({"epoch": 2, "step": 8, "eval": results(0.75, 0.25)},
                                            {"epoch": 4, "step": 16, "eval": results(0.25, 0.75)})
    summary.write()
    (tmp_path / "config.json").write_text(json.dumps({"dataset": "a"}))
    assert read_summary(tmp_path) == summary.to_json() == {"ranked_by": "a/test", "best": summary.best,
                                                           "last": summary.last}


def test_a_checkpoints_host_state_resumes_the_bookkeeping(tmp_path):
    summary = RunSummary("a/test", tmp_path / "summary.json", enabled=False)
    summary.add_train([{"loss": 2.0}])
    summary.add_evaluation(1, 4, results(0.5))
    assert summary.take_epoch_metrics() == [{"loss": 2.0}] and summary.epoch_metrics == []
    summary.add_train([{"loss": 1.0}, {"loss": 0.5}])
    host_state = json.loads(json.dumps(summary.host_state()))  # as a checkpoint stores it
    summary.add_train([{"loss": 0.25}])  # after the save: not in the checkpoint
    resumed = RunSummary("a/test", tmp_path / "summary.json")
    resumed.resume(host_state, "a", tmp_path)
    assert resumed.host_state() == {"summary": summary.to_json(), "epoch_metrics": [{"loss": 1.0}, {"loss": 0.5}]}
    summary.write()  # not process 0: nothing written
    assert not (tmp_path / "summary.json").exists()
    with pytest.raises(ConfigError, match=f"^{tmp_path} ranks its checkpoints by a/test, this config by b/test"):
        RunSummary("b/test", tmp_path / "summary.json").resume(host_state, "a", tmp_path)


def test_a_summary_written_before_eval_sets_is_resumed(tmp_path):
    entry = {"epoch": 1, "step": 4, "eval": {"split": "test", "fused": {"accuracy": 0.5}}}
    resumed = RunSummary("a/test", tmp_path / "summary.json")
    resumed.resume({"summary": {"best": entry, "last": entry}, "epoch_metrics": []}, "a", tmp_path)
    assert resumed.best == resumed.last == {"epoch": 1, "step": 4, "eval": {"a/test": {
        "dataset": "a", "split": "test", "fused": {"accuracy": 0.5}}}}
    assert resumed.add_evaluation(2, 8, results(0.25)) == 0.25 and resumed.best["epoch"] == 1
