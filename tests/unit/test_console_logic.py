"""The console's pure parts: sessions and CSRF, progress buffer, topic rates, SSE fanout,
pagination, lineage columns, the trace waterfall, restarts from mesh.json, health chart points."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from libs.images import image_records
from services.console import viewmodels
from services.console.access import CsrfMismatch, LoginRequired, Sessions, Visitor
from services.console.live import Fanout, ProgressBuffer, TopicRates

TOKEN = "unit-test-token-0123456789"


def test_login_needs_the_token_and_the_visitors_csrf_and_rotates_it() -> None:
    sessions = Sessions("secret", max_age_s=60, token=TOKEN)
    anonymous = sessions.visitor(None)
    assert anonymous.new and not anonymous.auth
    known = sessions.visitor(sessions.cookie(anonymous))
    assert known.csrf == anonymous.csrf and not known.new
    with pytest.raises(CsrfMismatch):
        sessions.log_in(known, TOKEN, "forged")
    with pytest.raises(ValueError, match="wrong API token"):
        sessions.log_in(known, "nope", known.csrf)
    logged = sessions.log_in(known, TOKEN, known.csrf)
    assert logged.auth and logged.csrf != known.csrf
    again = sessions.visitor(sessions.cookie(logged))
    Sessions.require_session(again)  # no exception
    Sessions.check_csrf(again, logged.csrf)


def test_a_cookie_of_another_secret_or_an_expired_one_is_stale() -> None:
    ours = Sessions("secret", max_age_s=60, token=TOKEN)
    theirs = Sessions("other", max_age_s=60, token=TOKEN)
    cookie = theirs.cookie(Visitor(csrf="x", auth=True))
    stale = ours.visitor(cookie)
    assert stale.stale and not stale.auth
    with pytest.raises(LoginRequired, match="expired"):
        Sessions.require_session(stale)
    expired = Sessions("secret", max_age_s=-1, token=TOKEN)
    assert expired.visitor(ours.cookie(Visitor(csrf="x", auth=True))).stale


def test_without_a_configured_token_nobody_logs_in() -> None:
    sessions = Sessions("secret", max_age_s=60, token="")
    v = sessions.visitor(sessions.cookie(Visitor(csrf="c")))
    with pytest.raises(ValueError, match="no API token is configured"):
        sessions.log_in(v, "", "c")


def test_progress_buffer_orders_dedupes_and_bounds_runs() -> None:
    buf = ProgressBuffer(max_runs=2)
    point = {"run_id": "a", "epochs": 3, "loss": 1.0, "worker": "w1"}
    assert buf.add({**point, "epoch": 2}) and buf.add({**point, "epoch": 1})
    assert not buf.add({**point, "epoch": 2})  # redelivered
    assert not buf.add({"run_id": "a"})  # not a progress event
    assert [p["epoch"] for p in buf.curve("a")] == [1, 2]
    assert buf.workers["a"] == "w1"
    assert buf.in_progress(lambda r: False) == ["a"]
    assert buf.in_progress(lambda r: r == "a") == []
    buf.add({**point, "run_id": "b", "epoch": 1})
    buf.add({**point, "run_id": "c", "epoch": 1})
    assert buf.curve("a") == [] and "a" not in buf.workers  # the oldest run went


def test_topic_rates_from_end_offsets() -> None:
    rates = TopicRates(window=3)
    rates.sample(0.0, {"t": 10})
    assert rates.current("t") == 0.0
    rates.sample(2.0, {"t": 30})
    assert rates.current("t") == 10.0
    rates.sample(4.0, {"t": 25})  # a recreated topic: never negative
    assert rates.current("t") == 0.0
    for i in range(5):
        rates.sample(6.0 + i, {"t": 25})
    assert len(rates.rates["t"]) == 3 and rates.ends["t"] == 25


async def test_fanout_drops_the_oldest_for_a_slow_client() -> None:
    fanout = Fanout(queue_size=2)
    async with fanout.subscribe() as queue:
        for i in range(3):
            fanout.publish("progress", {"i": i})
        assert fanout.clients == 1
        got = [await asyncio.wait_for(queue.get(), 1) for _ in range(2)]
    assert [g[1] for g in got] == ['{"i": 1}', '{"i": 2}']
    assert fanout.clients == 0


def test_pages_and_lineage_columns() -> None:
    assert viewmodels.pages(1000, 50, 950) == {
        "total": 1000, "page": 20, "pages": 20, "prev": 900, "next": None, "limit": 50,
    }  # fmt: skip
    assert viewmodels.pages(0, 50, 0)["pages"] == 1
    versions = [{"version": 2}, {"version": 1}]
    runs = [
        {"run_id": "r1", "dataset_version": 1, "model_name": "m", "model_version": 1},
        {"run_id": "r2", "dataset_version": 2, "model_name": "m", "model_version": 2},
        {"run_id": "r3", "dataset_version": 2, "model_name": "m", "model_version": None},
    ]
    out = viewmodels.dataset_lineage(versions, runs, {"m": {"production": 2, "staging": 2}})
    assert [e["run"]["run_id"] for e in out[0]["runs"]] == ["r2", "r3"]
    assert out[0]["runs"][0]["aliases"] == ["production", "staging"]
    assert out[0]["runs"][1]["aliases"] == [] and out[1]["runs"][0]["aliases"] == []


def test_waterfall_rows_nest_children_under_parents() -> None:
    spans = [
        {"span_id": "b", "parent_span_id": "a", "start_ns": 1_000_000, "end_ns": 3_000_000,
         "name": "child", "service": "s"},
        {"span_id": "a", "parent_span_id": "gone", "start_ns": 0, "end_ns": 4_000_000,
         "name": "root", "service": "s"},
    ]  # fmt: skip
    rows = viewmodels.waterfall(spans)
    assert [(r["name"], r["depth"]) for r in rows] == [("root", 0), ("child", 1)]
    assert rows[1]["left_pct"] == 25.0 and rows[1]["width_pct"] == 50.0
    assert rows[1]["duration_ms"] == 2.0
    assert viewmodels.waterfall([]) == []


def test_restarts_from_the_mesh_state() -> None:
    state = {"services": {"trainer": {"state": "running", "restarts": 2,
                                      "last_exit": {"reason": "killed by SIGKILL"}}}}  # fmt: skip
    assert viewmodels.restarts(state) == {
        "trainer": {"state": "running", "restarts": 2, "last_exit": "killed by SIGKILL"}
    }
    assert viewmodels.restarts({}) == {}


def test_image_records_for_the_models_input_shape() -> None:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((16, 16), 200, np.uint8)).save(buf, format="PNG")
    png = buf.getvalue()
    assert image_records(png, [8, 8]).shape == (1, 8, 8)
    assert image_records(png, [64]).shape == (1, 64)
    assert image_records(png, [3, 4, 4]).shape == (1, 3, 4, 4)
    assert int(image_records(png, [8, 8]).max()) == 200
    with pytest.raises(ValueError, match="not images"):
        image_records(png, [10])
    with pytest.raises(ValueError, match="not an image"):
        image_records(b"not a png", [8, 8])


def test_evidence_bars_compare_candidate_and_champion() -> None:
    rows = viewmodels.evidence_bars(
        {"predictions": 50, "champion_predictions": 100, "accuracy": None, "error_rate": 0.0,
         "champion_error_rate": 0.0}
    )  # fmt: skip
    assert [r["label"] for r in rows] == ["predictions", "error rate"]
    assert rows[0]["candidate_pct"] == 50.0 and rows[0]["champion_pct"] == 100.0
    assert rows[1]["candidate_pct"] == 0.0  # both zero: no division by zero


def _health(version: int, end: str, **figures: object) -> dict[str, object]:
    return {"model_name": "m", "version": version, "window_end": end, **figures}


def test_health_points_from_the_topic_or_the_monitors_history() -> None:
    point = viewmodels.health_point(
        _health(2, "2026-01-01T00:00:10Z", accuracy=0.9, error_rate=0.0, latency_ms_p99=4.5)
    )
    assert point is not None
    assert point["t"] == 1767225610.0 and point["accuracy"] == 0.9
    assert point["input_drift"] is None and point["error_rate"] == 0.0
    naive = viewmodels.health_point(_health(2, "2026-01-01T00:00:10"))  # taken as UTC
    assert naive is not None and naive["t"] == point["t"]
    assert viewmodels.health_point(_health(2, "yesterday")) is None
    assert viewmodels.health_point({"version": 2}) is None
    flagged = viewmodels.health_point(_health(1, "2026-01-01T00:00:10Z", accuracy=True))
    assert flagged is not None and flagged["accuracy"] is None  # a bool is no figure


def test_health_charts_per_version_and_for_the_rollout_pair() -> None:
    history = {
        "ready": True,
        "versions": [
            {"version": v, "t": [10.0, 20.0], "count": [1, 2], "accuracy": [0.5]}
            for v in range(1, 11)
        ]
        + [{"version": "x", "t": []}, {"version": 12}],
    }
    series = viewmodels.health_series(history)
    assert sorted(series) == list(range(1, 11))  # unusable entries left out
    assert series[3]["count"] == [1, 2] and series[3]["t"] == [10.0, 20.0]
    assert series[3]["accuracy"] == [None, None]  # a column of another length
    assert series[3]["latency_ms_p99"] == [None, None]  # a missing one
    charts = viewmodels.health_charts(series, [1, 10, 11])
    assert list(charts["versions"]) == [str(v) for v in range(3, 11)]  # the newest 8
    assert list(charts["extra"]) == ["1"]  # v10 has its chart; v11 no windows
    assert viewmodels.health_series(None) == {} and viewmodels.health_series([]) == {}
    assert viewmodels.health_charts({}, [2, 1]) == {"versions": {}, "extra": {}}


async def test_the_live_feed_turns_health_windows_into_chart_points() -> None:
    from libs.messaging import KafkaSettings
    from services.console.live import LiveFeed

    feed = LiveFeed(KafkaSettings(), [], interval_s=1.0, probe_health=lambda: None)
    async with feed.fanout.subscribe() as queue:
        window = _health(2, "2026-01-01T00:00:10Z", agreement=0.97)
        feed.handle("model.health.v1", json.dumps(window).encode())
        feed.handle("model.health.v1", b"{not json")
        feed.handle("model.health.v1", json.dumps(_health(2, "bad")).encode())
        kind, data = queue.get_nowait()
        assert kind == "health" and data.startswith('{"model_name": "m"')  # /events?model=
        assert json.loads(data)["agreement"] == 0.97 and json.loads(data)["version"] == 2
        assert queue.empty()
