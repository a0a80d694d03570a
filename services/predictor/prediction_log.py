"""prediction.logged.v1 for one answered request (HTTP or stream): the predicted classes,
the latency and, for the monitor's drift test, per-row summaries of the raw input
(libs.drift: the mean and std of each feature group; 32 numbers per 784-pixel row)."""

from __future__ import annotations

from typing import Literal

import numpy as np

from contracts.events import PredictionLogged
from libs.drift import feature_groups, summarize_rows

#: Decimals kept of each summary (the monitor bins them; more only costs bytes on Kafka).
SUMMARY_DECIMALS = 3
#: Rows summarized per request at most (evenly spaced): ~130 KB of JSON for 784 features,
#: well under Kafka's 1 MB message limit whatever the batch size.
MAX_SUMMARY_ROWS = 512


def prediction_logged(
    model_name: str,
    version: int,
    request_id: str,
    labels: np.ndarray,
    latency_ms: float,
    rows: np.ndarray | None,
    source: Literal["http", "stream"] = "http",
    *,
    role: Literal["champion", "shadow", "canary"] | None = None,
    champion_version: int | None = None,
    champion_predictions: np.ndarray | None = None,
    error: str | None = None,
) -> PredictionLogged:
    summary = None
    if rows is not None and len(rows):
        flat = np.asarray(rows).reshape(len(rows), -1)
        if len(flat) > MAX_SUMMARY_ROWS:
            flat = flat[np.linspace(0, len(flat) - 1, MAX_SUMMARY_ROWS).astype(np.int64)]
        summary = (
            summarize_rows(flat, feature_groups(flat.shape[1])).round(SUMMARY_DECIMALS).tolist()
        )
    return PredictionLogged(
        model_name=model_name,
        version=version,
        request_id=request_id,
        predictions=np.asarray(labels).tolist(),
        latency_ms=round(latency_ms, 3),
        source=source,
        input_summary=summary,
        role=role,
        champion_version=champion_version,
        champion_predictions=(
            np.asarray(champion_predictions).tolist() if champion_predictions is not None else None
        ),
        error=error[:1000] if error else None,
    )
