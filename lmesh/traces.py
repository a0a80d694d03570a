"""Reading the spans the local mesh wrote (``LMESH_SPANS_DIR``) and printing a trace as a tree."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def load_spans(directory: Path) -> list[dict[str, Any]]:
    spans: list[dict[str, Any]] = []
    for path in sorted(directory.glob("*.jsonl")):
        for line in path.read_text(errors="replace").splitlines():
            try:
                spans.append(json.loads(line))
            except ValueError:
                continue
    return spans


def traces_for(spans: list[dict[str, Any]], **ids: str) -> list[str]:
    """Trace ids of spans whose ``lmesh.<id>`` attributes match."""
    found: list[str] = []
    for s in spans:
        attrs = s.get("attributes", {})
        if (
            all(str(attrs.get(f"lmesh.{k}")) == v for k, v in ids.items())
            and s["trace_id"] not in found
        ):
            found.append(s["trace_id"])
    return found


def render_trace(spans: list[dict[str, Any]]) -> str:
    by_parent: dict[str | None, list[dict[str, Any]]] = {}
    ids = {s["span_id"] for s in spans}
    for s in spans:
        parent = s.get("parent_span_id") if s.get("parent_span_id") in ids else None
        by_parent.setdefault(parent, []).append(s)
    for children in by_parent.values():
        children.sort(key=lambda s: s["start_ns"])
    start = min((s["start_ns"] for s in spans), default=0)
    lines = [f"trace {spans[0]['trace_id'] if spans else '-'}"]

    def walk(parent: str | None, depth: int) -> None:
        for s in by_parent.get(parent, []):
            dur_ms = (s["end_ns"] - s["start_ns"]) / 1e6
            offset_ms = (s["start_ns"] - start) / 1e6
            attrs = s.get("attributes", {})
            ids = " ".join(
                f"{k[6:]}={v}"
                for k, v in attrs.items()
                if k.startswith("lmesh.") and k != "lmesh.event_id"
            )
            lines.append(
                f"{'  ' * depth}{s['service']}: {s['name']}  {dur_ms:.1f} ms  (+{offset_ms:.0f} ms){'  ' + ids if ids else ''}"
            )
            walk(s["span_id"], depth + 1)

    walk(None, 1)
    return "\n".join(lines)
