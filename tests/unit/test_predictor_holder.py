"""Atomic model holder: swap, previous kept warm, out-of-order loads resolved by ticket."""

from __future__ import annotations

from types import SimpleNamespace

from services.predictor.holder import ModelTable


def _model(version: int):
    return SimpleNamespace(name="m", version=version, version_str=str(version))


def test_swap_keeps_previous_and_serves_both_versions() -> None:
    installed = []
    table = ModelTable(
        on_install=lambda new, old: installed.append((new.version, old and old.version))
    )
    assert not table.ready()
    v1, v2 = _model(1), _model(2)
    assert table.install(v1, table.ticket())
    assert table.install(v2, table.ticket())
    assert table.get("m") is v2 and table.get("m", 2) is v2 and table.get("m", 1) is v1
    assert table.get("m", 3) is None and table.get("other") is None
    assert table.holder("m").versions() == ["2", "1"]
    assert installed == [(1, None), (2, 1)]
    assert table.ready() and table.serving() == {"m": 2}


def test_a_load_started_earlier_never_overrides_a_later_one() -> None:
    table = ModelTable()
    early, late = table.ticket(), table.ticket()  # e.g. start-up load, then a promotion
    assert table.install(_model(4), late)
    assert not table.install(_model(3), early)  # the slow start-up load finishes last
    assert table.get("m").version == 4


def test_rollback_to_a_lower_version_is_a_swap() -> None:
    table = ModelTable(keep_previous=False)
    table.install(_model(5), table.ticket())
    assert table.install(_model(4), table.ticket())
    assert table.get("m").version == 4 and table.get("m", 5) is None
