"""lmesh monitor: the window table's rows from the monitor's GET /models document."""

from __future__ import annotations

from lmesh.commands.monitor import COLUMNS, window_rows, window_table


def _window(**kw: object) -> dict[str, object]:
    base: dict[str, object] = {
        "model_name": "fm",
        "version": 2,
        "rows": 1000,
        "rows_with_inputs": 1000,
        "labelled": 800,
        "total_rows": 12000,
        "drifting": False,
        "reference": True,
        "last_health": {
            "input_drift": 0.0123,
            "prediction_drift": 0.004,
            "accuracy": 0.8875,
            "latency_ms_p50": 1.25,
            "latency_ms_p95": 3.5,
            "latency_ms_p99": 8.0,
            "error_rate": 0.001,
        },
    }
    base.update(kw)
    return base


def test_rows_say_ok_drift_no_reference_or_warming_up() -> None:
    doc = {
        "windows": [
            _window(),
            _window(version=3, drifting=True),
            _window(version=4, reference=False, last_health=None),
            _window(version=5, last_health=None),
        ],
        "ignored": {"unknown_request_id": 3},
    }
    rows = window_rows(doc)
    assert [len(r) for r in rows] == [len(COLUMNS)] * 4
    assert rows[0] == [
        "fm", "2", "1,000", "0.012", "0.004", "88.75%", "800", "1.2", "3.5", "8.0", "0.1%", "ok",
    ]  # fmt: skip
    assert [r[-1] for r in rows] == ["ok", "DRIFT", "no reference", "warming up"]
    assert rows[2][3:6] == ["-", "-", "-"]
    table = window_table(doc)
    assert table.row_count == 4 and "unknown_request_id=3" in str(table.caption)
