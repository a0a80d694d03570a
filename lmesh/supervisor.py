"""``python -m lmesh.supervisor CONFIG``: the background process behind ``lmesh up --detach``.

It owns the broker and the services (they die with it, even on SIGKILL), restarts what
exits, records restarts and exit reasons in ``mesh.json``, and stops everything on SIGTERM
(``lmesh down``). ``CONFIG`` is a 0600 JSON file of :class:`lmesh.mesh.MeshConfig`, written
by ``lmesh up --detach`` and deleted here once read (it holds the API token).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from lmesh.mesh import Mesh, MeshConfig, MeshError, wait_for_stop_signal


def _say(line: str) -> None:
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m lmesh.supervisor CONFIG_JSON", file=sys.stderr)
        return 2
    path = Path(args[0])
    config = MeshConfig.from_json(json.loads(path.read_text()))
    path.unlink()
    mesh = Mesh(config, on_event=_say)
    try:
        mesh.start()
    except MeshError as exc:
        _say(f"error: {exc}")
        return 2
    _say(f"mesh up: broker {mesh.bootstrap}, supervising {len(mesh.processes)} services")
    try:
        signum = wait_for_stop_signal()
        _say(f"signal {signum}: stopping")
    finally:
        mesh.stop()
        _say("stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
