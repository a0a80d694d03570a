"""Pure view-model builders: lineage columns, run trace rows, overview rows, pagination."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from contracts.events import MODEL_HEALTH_SERIES


def pages(total: int, limit: int, offset: int) -> dict[str, Any]:
    """Pagination facts for a list of ``total`` rows shown ``limit`` at a time."""
    count = max(1, math.ceil(total / limit))
    current = offset // limit + 1
    return {
        "total": total,
        "page": current,
        "pages": count,
        "prev": max(0, offset - limit) if offset > 0 else None,
        "next": offset + limit if offset + limit < total else None,
        "limit": limit,
    }


def dataset_lineage(
    versions: list[dict[str, Any]],
    runs: list[dict[str, Any]],
    aliases: dict[str, dict[str, int]],
) -> list[dict[str, Any]]:
    """dataset version -> runs -> model versions -> aliases, one entry per dataset version.

    ``runs`` are the registry's run summaries of the dataset; ``aliases`` maps each model
    to its alias -> version table."""
    by_version: dict[int, list[dict[str, Any]]] = {}
    for run in runs:
        if run.get("dataset_version") is not None:
            by_version.setdefault(int(run["dataset_version"]), []).append(run)
    out = []
    for v in versions:
        entries = []
        for run in by_version.get(int(v["version"]), []):
            model, mv = run.get("model_name"), run.get("model_version")
            held = sorted(
                a for a, held_v in aliases.get(model or "", {}).items() if mv and held_v == mv
            )
            entries.append({"run": run, "model": model, "model_version": mv, "aliases": held})
        out.append({"version": v, "runs": entries})
    return out


def waterfall(spans: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A trace's spans as rows (depth-first by start), with offset and width in percent."""
    if not spans:
        return []
    ids = {s["span_id"] for s in spans}
    children: dict[str | None, list[dict[str, Any]]] = {}
    for s in spans:
        parent = s.get("parent_span_id") if s.get("parent_span_id") in ids else None
        children.setdefault(parent, []).append(s)
    start = min(s["start_ns"] for s in spans)
    end = max(s["end_ns"] for s in spans)
    total = max(1, end - start)
    rows: list[dict[str, Any]] = []

    def walk(parent: str | None, depth: int) -> None:
        for s in sorted(children.get(parent, []), key=lambda s: s["start_ns"]):
            rows.append(
                {
                    "service": s.get("service", "?"),
                    "name": s.get("name", "?"),
                    "depth": depth,
                    "offset_ms": (s["start_ns"] - start) / 1e6,
                    "duration_ms": (s["end_ns"] - s["start_ns"]) / 1e6,
                    "left_pct": 100 * (s["start_ns"] - start) / total,
                    "width_pct": max(0.3, 100 * (s["end_ns"] - s["start_ns"]) / total),
                }
            )
            walk(s["span_id"], depth + 1)

    walk(None, 0)
    return rows


def restarts(mesh_state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each service's supervision record from lmesh up's mesh.json (empty when not local)."""
    services: dict[str, Any] = mesh_state.get("services") or {}
    return {
        name: {
            "state": record.get("state", "?"),
            "restarts": record.get("restarts", 0),
            "last_exit": (record.get("last_exit") or {}).get("reason"),
        }
        for name, record in services.items()
        if isinstance(record, dict)
    }


#: (label, candidate key, champion key, higher is better) of a rollout step's evidence
EVIDENCE_ROWS = (
    ("predictions", "predictions", "champion_predictions", True),
    ("live accuracy", "accuracy", "champion_accuracy", True),
    ("error rate", "error_rate", "champion_error_rate", False),
    ("p99 latency (ms)", "latency_ms_p99", "champion_latency_ms_p99", False),
)


def evidence_bars(evidence: dict[str, Any]) -> list[dict[str, Any]]:
    """Candidate vs champion per figure of a step's evidence, as bar widths (percent of
    the larger of the two); figures neither side has are left out."""
    rows = []
    for label, ours, theirs, higher_better in EVIDENCE_ROWS:
        a, b = evidence.get(ours), evidence.get(theirs)
        if a is None and b is None:
            continue
        top = max(abs(a or 0), abs(b or 0)) or 1
        rows.append(
            {
                "label": label,
                "candidate": a,
                "champion": b,
                "candidate_pct": 100 * abs(a or 0) / top,
                "champion_pct": 100 * abs(b or 0) / top,
                "higher_better": higher_better,
            }
        )
    return rows


#: What a health chart plots of a model.health.v1 (the monitor's history or the topic)
HEALTH_FIELDS = MODEL_HEALTH_SERIES
#: Versions with a chart of their own on a model page (the newest with history)
HEALTH_CHARTS = 8


def health_point(health: dict[str, Any]) -> dict[str, Any] | None:
    """One model.health.v1 (or a monitor history point) as a chart point: ``t`` is its
    window's end in epoch seconds; None when it has no usable window end."""
    end = health.get("window_end")
    if isinstance(end, str):
        try:
            end = datetime.fromisoformat(end)
        except ValueError:
            return None
    if not isinstance(end, datetime):
        return None
    if end.tzinfo is None:
        end = end.replace(tzinfo=UTC)
    point: dict[str, Any] = {"t": round(end.timestamp(), 3)}
    for key in HEALTH_FIELDS:
        value = health.get(key)
        point[key] = (
            value if isinstance(value, int | float) and not isinstance(value, bool) else None
        )
    point["drifting"] = bool(health.get("drifting"))
    return point


def health_series(history: Any) -> dict[int, dict[str, list[Any]]]:
    """The monitor's ``GET /history`` answer (columns per version, oldest first) as
    version -> columns ``t`` and :data:`HEALTH_FIELDS` (+ ``drifting``); a column missing
    or of another length is all None. Empty when the monitor did not answer."""
    out: dict[int, dict[str, list[Any]]] = {}
    for entry in (history or {}).get("versions", []) if isinstance(history, dict) else []:
        version, t = entry.get("version"), entry.get("t")
        if not isinstance(version, int) or not isinstance(t, list):
            continue
        columns: dict[str, list[Any]] = {"t": t}
        for key in (*HEALTH_FIELDS, "drifting"):
            column = entry.get(key)
            columns[key] = (
                column if isinstance(column, list) and len(column) == len(t) else [None] * len(t)
            )
        out[version] = columns
    return out


def health_charts(series: dict[int, dict[str, list[Any]]], also: list[int]) -> dict[str, Any]:
    """What the model page's health charts draw: a chart per version (the newest
    ``HEALTH_CHARTS`` with windows) in ``versions``; ``also`` (the current rollout's
    candidate and champion) in ``extra`` when not among them."""
    shown = sorted(series, reverse=True)[:HEALTH_CHARTS]
    return {
        "versions": {str(v): series[v] for v in sorted(shown)},
        "extra": {str(v): series[v] for v in also if v in series and v not in shown},
    }
