"""The evaluator on a tiny log whose answers are computed by hand."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from service.offline import clicklog
from service.offline.baselines import Popular, SequentialRules
from service.offline.clicklog import ClickLog
from service.offline.evaluate import (
    BaselineModel,
    Result,
    ServedModel,
    align_times,
    run_static,
    run_streaming,
    static_cases,
    summarise,
)
from service.offline.tune import split_validation
from service.settings import Settings
from tests.helpers import wait_drained

TRAIN = "session_id\titem_id\tpos\n1\tA\t0\n1\tB\t1\n2\tA\t0\n2\tB\t1\n3\tA\t0\n3\tC\t1\n"
TEST = "session_id\titem_id\tpos\n9\tA\t0\n9\tB\t1\n9\tC\t2\n"


HAND = {"sequence_weight": 1.0, "before_weight": 0.0, "position_decay": 1.0, "idf_weight": 0.0,
        "repeat_weight": 0.0, "neighbours": 100}
"""The parameters the hand-computed answers assume."""


@pytest.fixture
def logs(tmp_path: Path) -> tuple[ClickLog, ClickLog]:
    (tmp_path / "train.tsv").write_text(TRAIN)
    with gzip.open(tmp_path / "test.tsv.gz", "wt") as f:
        f.write(TEST)
    train = clicklog.read(tmp_path / "train.tsv")
    return train, align_times(train, clicklog.read(tmp_path / "test.tsv.gz"))


def test_formats_and_synthesised_times(tmp_path: Path, logs: tuple[ClickLog, ClickLog]) -> None:
    train, test = logs
    assert train.items.tolist() == ["A", "B", "A", "B", "A", "C"]
    assert list(np.diff(train.times)) == [1.0, 99.0, 1.0, 99.0, 1.0]
    assert test.times.min() > train.times.max()
    (tmp_path / "rsc.txt").write_text("SessionId\tItemId\tTime\n5\tX\t100.5\n5\tY\t101.0\n")
    rsc = clicklog.read(tmp_path / "rsc.txt")
    assert rsc.times.tolist() == [100.5, 101.0] and rsc.sessions.tolist() == ["5", "5"]
    (tmp_path / "c.csv").write_text("user;product;when\nu;p;7\n")
    generic = clicklog.read(tmp_path / "c.csv", "csv", "session=user,item=product,time=when",
                            ";")
    assert generic.items.tolist() == ["p"] and generic.times.tolist() == [7.0]
    with pytest.raises(ValueError, match="unknown format"):
        clicklog.read(tmp_path / "c.csv")


def test_cases_are_every_prefix(logs: tuple[ClickLog, ClickLog]) -> None:
    cases = list(static_cases(logs[1]))
    assert [(c.prefix, c.target) for c in cases] == [(["A"], "B"), (["A", "B"], "C")]
    assert cases[1].times[0] < cases[1].times[1]


async def test_baselines_hand_computed(logs: tuple[ClickLog, ClickLog]) -> None:
    train, test = logs
    pop = await run_static(BaselineModel(Popular()), train, test, progress=False)
    sr = await run_static(BaselineModel(SequentialRules()), train, test, progress=False)
    # POP ranks A, B, C: B is 2nd, C 3rd. SR: A -> B first; B has no rule: popular, C 3rd.
    assert pop.ranks == [2, 3] and sr.ranks == [1, 3]
    summary = summarise({"POP": pop, "SR": sr}, train)
    assert summary["POP"]["HR@20"] == 1.0
    assert summary["POP"]["MRR@20"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert summary["SR"]["MRR@20"] == pytest.approx((1 + 1 / 3) / 2)
    assert summary["SR"]["NDCG@20"] == pytest.approx((1 + 1 / np.log2(4)) / 2)
    assert summary["POP"]["coverage"] == 1.0
    hr, mrr = sr.curve()
    assert list(hr[:3]) == [0.5, 0.5, 1.0] and mrr[0] == 0.5


async def test_served_model_through_http_hand_computed(settings: Settings,
                                                       logs: tuple[ClickLog, ClickLog]) -> None:
    """[A] -> B: neighbours 1, 2, 3 (similarity 1 each); B follows the anchor A in two of them:
    B 2*(1+1) = 4 > A 3 > C 2. [A, B] -> C: sessions 1, 2 share A (1/2) and B (1): 1.5 each,
    session 3 only A: 0.5. A 3.5 > B 3 > C 0.5*(1+1) = 1: C ranks 3rd."""
    train, test = logs
    model = ServedModel(settings.replace(**HAND), http=True)
    try:
        result = await run_static(model, train, test, progress=False)
    finally:
        await model.close()
    assert result.ranks == [1, 3]
    assert len(result.latencies) == 2 and all(t > 0 for t in result.latencies)


async def test_streaming_protocol_learns_as_events_arrive(settings: Settings,
                                                          logs: tuple[ClickLog, ClickLog]
                                                          ) -> None:
    train, test = logs
    model = ServedModel(settings.replace(**HAND), http=True)
    try:
        result = await run_streaming(model, train, test, progress=False)
        stats = await wait_drained(model.store)
    finally:
        await model.close()
    assert len(result.ranks) == 2 and result.ranks[0] == 1
    # the test events went through ingestion and were applied by the background worker
    assert stats["events_accepted"] == stats["events_processed"] == 3
    assert stats["live_sessions"] == 1


def test_validation_split_cuts_whole_sessions_from_the_end(
        logs: tuple[ClickLog, ClickLog]) -> None:
    fit, valid = split_validation(logs[0], 1 / 3)
    assert fit.sessions.tolist() == ["1", "1", "2", "2"]
    assert valid.sessions.tolist() == ["3", "3"]


def test_result_ranks() -> None:
    r = Result("x")
    r.add(["a", "b"], "b", 0.001)
    r.add(["a", "b"], "z", 0.001)
    assert r.ranks == [2, 0]


def test_eval_out_without_matplotlib_writes_the_report_without_charts(
        standalone_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Decided before the work starts (issue 27, point 2): no crash after it, a report
    without charts that says why and how to get them."""
    import os
    import sys

    from service.cli import main

    (tmp_path / "train.tsv").write_text(TRAIN)
    (tmp_path / "test.tsv").write_text(TEST)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    out = tmp_path / "report"
    assert main(["eval", "--train", str(tmp_path / "train.tsv"), "--test",
                 str(tmp_path / "test.tsv"), "--models", "sessionrec,pop", "--protocol", "both",
                 "--out", str(out), "--redis-url", standalone_url,
                 "--namespace", f"nocharts{os.getpid()}"]) == 0
    err = capsys.readouterr().err
    note = "matplotlib is not installed"
    assert note in err and "pip install 'sessionrec[eval]'" in err
    assert err.index(note) < err.index("writing to")  # said before the work
    report = (tmp_path / "report.md").read_text()
    assert "- no charts: matplotlib is not installed (pip install 'sessionrec[eval]')" in report
    assert "static protocol" in report and "streaming protocol" in report
    assert not list(tmp_path.glob("*.png"))
