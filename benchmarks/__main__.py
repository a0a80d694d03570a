"""``python -m benchmarks`` (``make bench``): run every benchmark, each in its own process,
and print one JSON document per benchmark; all of them also go to .bench/results.json.

``--only NAME[,NAME]`` runs a subset; ``--device cuda`` is passed to those that take it.
Each benchmark compares against its own baseline within the same run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: name -> arguments (quick but meaningful defaults; see each module's --help)
SUITE: dict[str, list[str]] = {
    "trainer_throughput": ["--epochs", "2", "--rounds", "3"],
    "accuracy": ["--model", "mlp", "--seeds", "3"],
    "ingest_throughput": ["--records", "100000"],
    "predictor_load": ["--archs", "mlp,cnn", "--duration", "6", "--rounds", "2"],
    "tracing_overhead": ["--duration", "6", "--rounds", "3"],
    "time_to_production": ["--epochs", "5"],
    "chaos": ["--pg-outage", "30"],
    "console_pages": ["--requests", "40"],
    "stream_inference": ["--records", "20000", "--duration", "5"],
    "monitor_overhead": ["--duration", "5", "--rounds", "3"],
    "shadow_latency": ["--rounds", "3", "--duration", "8"],
}
TAKES_DEVICE = {"trainer_throughput", "accuracy", "predictor_load"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default="", help="comma-separated benchmark names")
    p.add_argument("--device", default=None, help="cpu | cuda, for the benchmarks that take it")
    args = p.parse_args()
    names = [n for n in args.only.split(",") if n] or list(SUITE)
    unknown = set(names) - set(SUITE)
    if unknown:
        p.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}; known: {', '.join(SUITE)}")
    results: dict[str, object] = {}
    failed = []
    for name in names:
        cmd = [sys.executable, "-m", f"benchmarks.{name}", *SUITE[name]]
        if args.device and name in TAKES_DEVICE:
            cmd += ["--device", args.device]
        print(f"# {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
        started = time.monotonic()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            failed.append(name)
            print(proc.stderr[-3000:], file=sys.stderr)
            continue
        start = proc.stdout.find("{")
        try:
            result = json.loads(proc.stdout[start:])
        except ValueError:
            result = {"raw": proc.stdout[-2000:]}
        results[name] = result
        print(
            json.dumps(
                {
                    "benchmark": name,
                    "wall_s": round(time.monotonic() - started, 1),
                    "result": result,
                }
            )
        )
    out = ROOT / ".bench" / "results.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
