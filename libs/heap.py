"""The process heap and the garbage collector: what a long-running process does once its
start-up is done."""

from __future__ import annotations

import gc


def freeze_startup_heap() -> None:
    """Move everything allocated so far (modules, the app, a Kafka client) out of the
    garbage collector's sight: it lives as long as the process. Without this every full
    collection, triggered by objects that outlive a few young collections (events in flight,
    logged predictions waiting for their batch), scans the whole import-time heap again:
    measured ~150 ms per collection in the stream worker (~7 us per record), ~90 ms in the
    predictor's log writer (~3 us per logged request)."""
    gc.collect()
    gc.freeze()
