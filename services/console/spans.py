"""The local mesh's span files (``LMESH_SPANS_DIR/*.jsonl``, what ``lmesh trace`` reads),
indexed incrementally: each refresh reads only the bytes appended since the last one, so a
run page costs a ``stat`` per file, not a parse of every span the mesh ever wrote."""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any


class SpanIndex:
    def __init__(self, directory: Path, *, max_traces: int = 20_000) -> None:
        self.directory = directory
        self.max_traces = max_traces
        self._read: dict[Path, int] = {}  # bytes of complete lines consumed per file
        self._traces: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
        self._by_run: dict[str, str] = {}
        self._lock = threading.Lock()

    def refresh(self) -> None:
        if not self.directory.is_dir():
            return
        with self._lock:
            for path in sorted(self.directory.glob("*.jsonl")):
                self._read_new(path)

    def _read_new(self, path: Path) -> None:
        try:
            size = path.stat().st_size
        except OSError:
            return
        done = self._read.get(path, 0)
        if size < done:  # truncated or replaced: start over
            done = 0
        if size == done:
            return
        with path.open("rb") as f:
            f.seek(done)
            chunk = f.read(size - done)
        end = chunk.rfind(b"\n") + 1  # a line still being written waits for the next refresh
        for line in chunk[:end].splitlines():
            try:
                self._add(json.loads(line))
            except (ValueError, KeyError, TypeError):
                continue
        self._read[path] = done + end

    def _add(self, span: dict[str, Any]) -> None:
        trace_id = span["trace_id"]
        self._traces.setdefault(trace_id, []).append(span)
        run_id = (span.get("attributes") or {}).get("lmesh.run_id")
        if run_id is not None:
            self._by_run.setdefault(str(run_id), trace_id)
        while len(self._traces) > self.max_traces:
            old, _ = self._traces.popitem(last=False)
            self._by_run = {r: t for r, t in self._by_run.items() if t != old}

    def trace_of_run(self, run_id: str) -> list[dict[str, Any]]:
        """The spans of the first trace that names ``run_id`` (``lmesh.run_id``)."""
        self.refresh()
        with self._lock:
            trace_id = self._by_run.get(run_id)
            return list(self._traces.get(trace_id, [])) if trace_id else []
