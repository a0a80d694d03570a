"""Live windows per model version: what the monitor knows, and what it decides.

Pure logic: no broker, web or store imports. The handlers feed it decoded events and
publish what it returns (``model.health.v1``, ``data.drift.v1``).

- A version's window holds its most recent ``size`` predicted rows (requests are kept
  whole: the oldest request leaves once the rest still fill the window), the input
  summaries of the most recent ``size`` rows that carried them, and the most recent
  ``size`` labelled rows (feedback joined by request id).
- Feedback credits every version that answered its request id: a shadowed request is
  answered by the champion and by the candidate under one id, and each gets the label.
- A window is evaluated every ``step`` new rows, and after ``period_s`` with new rows;
  each evaluation is one ``model.health.v1``.
- Input drift (libs.drift PSI) raises ``data.drift.v1`` after ``raise_after`` consecutive
  evaluations at or over ``threshold``, and clears under ``clear_threshold``: one noisy
  window neither raises nor clears it.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

import numpy as np

from contracts.events import (
    DataDrift,
    InferenceCompleted,
    LoggedRequest,
    ModelHealth,
    PredictionFeedback,
    PredictionLogged,
)
from libs.drift import Reference, class_psi

__all__ = [
    "FeedbackOutcome",
    "Monitor",
    "VersionInfo",
    "VersionWindow",
    "WindowConfig",
    "predicted_labels",
]

#: Group summaries named in ``input_drift_groups`` (the most drifted first).
TOP_GROUPS = 5

FeedbackOutcome = Literal["joined", "pending", "duplicate", "out_of_range"]


@dataclass(frozen=True)
class WindowConfig:
    size: int = 1000
    step: int = 500
    period_s: float = 10.0
    min_rows: int = 200
    threshold: float = 0.1
    clear_threshold: float = 0.05
    raise_after: int = 3
    #: Answers remembered for the feedback join, one per request id and version that
    #: answered it (the oldest request ids forgotten first).
    remembered_requests: int = 200_000
    #: Feedback waiting for its prediction (it may arrive first), and for how long.
    pending_feedback: int = 10_000
    pending_feedback_s: float = 300.0

    def __post_init__(self) -> None:
        if not (self.size >= 1 and self.step >= 1 and 1 <= self.min_rows <= self.size):
            raise ValueError("window: need size >= 1, step >= 1 and 1 <= min_rows <= size")
        if not 0 <= self.clear_threshold <= self.threshold:
            raise ValueError("window: need 0 <= clear_threshold <= threshold")
        if self.raise_after < 1:
            raise ValueError("window: raise_after must be >= 1")


@dataclass(frozen=True)
class VersionInfo:
    """What the model card says about a version (loaded by the handlers)."""

    reference: Reference | None = None
    expected_predictions: list[int] | list[float] | None = None
    dataset: str | None = None
    dataset_version: int | None = None
    num_classes: int | None = None
    note: str | None = None  # why there is no reference, when there is none


@dataclass
class _Requests:
    at: float
    labels: np.ndarray
    latency_ms: float
    error: bool


@dataclass
class VersionWindow:
    model_name: str
    version: int
    config: WindowConfig
    info: VersionInfo = field(default_factory=VersionInfo)
    requests: deque[_Requests] = field(default_factory=deque)
    rows: int = 0
    inputs: deque[tuple[float, np.ndarray]] = field(default_factory=deque)
    input_rows: int = 0
    labelled: deque[bool] = field(default_factory=deque)
    #: shadow rows: did this version agree with the champion's answer (rollouts)
    agreed: deque[bool] = field(default_factory=deque)
    since_evaluation: int = 0
    labels_since_evaluation: int = 0
    last_evaluation: float = 0.0
    over: int = 0
    drifting: bool = False
    total_rows: int = 0
    last_health: ModelHealth | None = None

    def add(self, at: float, labels: np.ndarray, latency_ms: float, error: bool) -> None:
        n = len(labels)
        self.requests.append(_Requests(at, labels, latency_ms, error))
        self.rows += n
        self.total_rows += n
        self.since_evaluation += max(n, 1)
        while (
            len(self.requests) > 1 and self.rows - len(self.requests[0].labels) >= self.config.size
        ):
            self.rows -= len(self.requests.popleft().labels)

    def add_inputs(self, at: float, summaries: np.ndarray) -> None:
        self.inputs.append((at, summaries))
        self.input_rows += len(summaries)
        while len(self.inputs) > 1 and self.input_rows - len(self.inputs[0][1]) >= self.config.size:
            self.input_rows -= len(self.inputs.popleft()[1])

    def fits(self, summaries: np.ndarray, predictions: int) -> bool:
        """At most one summary per predicted row, as many columns as the reference (or as
        the summaries already in the window), all finite."""
        if not 1 <= len(summaries) <= max(predictions, 1):
            return False
        if self.info.reference is not None:
            width = len(self.info.reference.edges)
        elif self.inputs:
            width = self.inputs[0][1].shape[1]
        else:
            width = summaries.shape[1]
        return summaries.shape[1] == width and bool(np.isfinite(summaries).all())

    def add_agreement(self, mine: list[int], champion: list[int]) -> None:
        self.agreed.extend(a == b for a, b in zip(mine, champion, strict=False))
        while len(self.agreed) > self.config.size:
            self.agreed.popleft()

    def add_label(self, correct: bool) -> None:
        self.labelled.append(correct)
        self.labels_since_evaluation += 1
        if len(self.labelled) > self.config.size:
            self.labelled.popleft()

    def due(self, now: float) -> bool:
        """Every ``step`` new rows; after ``period_s`` with new rows or new feedback."""
        if self.since_evaluation >= self.config.step:
            return True
        fresh = self.since_evaluation > 0 or self.labels_since_evaluation > 0
        return fresh and now - self.last_evaluation >= self.config.period_s

    # ------------------------------------------------------------------ evaluate

    def input_drift(self) -> tuple[float | None, dict[str, float], str | None]:
        ref = self.info.reference
        if ref is None:
            return None, {}, self.info.note or "no reference statistics for this version"
        if self.input_rows < self.config.min_rows:
            return None, {}, f"{self.input_rows} rows with inputs (< {self.config.min_rows})"
        width = len(ref.edges)
        parts = [s for _, s in self.inputs if s.shape[1] == width]
        if sum(len(s) for s in parts) < self.config.min_rows:  # logged before the reference
            return None, {}, "too few rows with inputs of the reference's width"
        summaries = np.concatenate(parts)
        per_column = ref.psi(ref.bin_counts(summaries))
        order = np.argsort(per_column)[::-1][:TOP_GROUPS]
        names = ref.names
        top = {names[i]: round(float(per_column[i]), 4) for i in order}
        return float(per_column.mean()), top, None

    def prediction_drift(self) -> float | None:
        expected = self.info.expected_predictions
        if expected is None and self.info.reference is not None:
            expected = self.info.reference.class_prior
        if not expected or sum(expected) <= 0 or self.rows < self.config.min_rows:
            return None
        labels = np.concatenate([r.labels for r in self.requests])
        return class_psi(expected, labels)

    def evaluate(self, now: float) -> tuple[ModelHealth, DataDrift | None]:
        self.since_evaluation = 0
        self.labels_since_evaluation = 0
        self.last_evaluation = now
        notes: list[str] = []
        score, groups, why = self.input_drift()
        if why:
            notes.append(why)
        raised = self._hysteresis(score, notes)
        latencies = np.array([r.latency_ms for r in self.requests if not r.error])
        p50 = p95 = p99 = None
        if len(latencies):
            p50, p95, p99 = (round(float(v), 3) for v in np.percentile(latencies, [50, 95, 99]))
        errors = sum(1 for r in self.requests if r.error)
        starts = [now]
        if self.requests:
            starts.append(self.requests[0].at)
        if self.inputs:
            starts.append(self.inputs[0][0])
        window_start = _utc(min(starts))
        pdrift = self.prediction_drift()
        health = ModelHealth(
            model_name=self.model_name,
            version=self.version,
            window_start=window_start,
            window_end=_utc(now),
            count=self.rows,
            requests=len(self.requests),
            input_drift=round(score, 6) if score is not None else None,
            input_drift_groups=groups,
            prediction_drift=round(pdrift, 6) if pdrift is not None else None,
            accuracy=(round(sum(self.labelled) / len(self.labelled), 6) if self.labelled else None),
            labelled=len(self.labelled),
            latency_ms_p50=p50,
            latency_ms_p95=p95,
            latency_ms_p99=p99,
            error_rate=round(errors / len(self.requests), 6) if self.requests else 0.0,
            drifting=self.drifting,
            notes=notes,
            agreement=round(sum(self.agreed) / len(self.agreed), 6) if self.agreed else None,
            compared=len(self.agreed),
        )
        self.last_health = health
        drift = None
        if raised and score is not None:
            drift = DataDrift(
                model_name=self.model_name,
                version=self.version,
                score=round(score, 6),
                threshold=self.config.threshold,
                window_start=window_start,
                window_end=health.window_end,
                count=self.input_rows,
                dataset=self.info.dataset,
                dataset_version=self.info.dataset_version,
                reason=(
                    f"input drift {score:.3f} >= {self.config.threshold} in "
                    f"{self.config.raise_after} consecutive windows of {self.input_rows} rows; "
                    f"most drifted: {', '.join(f'{k}={v}' for k, v in groups.items())}"
                ),
            )
        return health, drift

    def _hysteresis(self, score: float | None, notes: list[str]) -> bool:
        """Update the drift state with one window's score; True when drift is raised now."""
        if score is None:
            return False
        cfg = self.config
        self.over = self.over + 1 if score >= cfg.threshold else 0
        if not self.drifting and self.over >= cfg.raise_after:
            self.drifting = True
            return True
        if self.drifting and score < cfg.clear_threshold:
            self.drifting = False
            notes.append(f"input drift cleared ({score:.3f} < {cfg.clear_threshold})")
        return False


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def predicted_labels(event: InferenceCompleted) -> np.ndarray | None:
    """The predicted classes of a stream answer: its 'label' output, else the argmax of
    its 'probabilities'; None when it has neither."""
    by_name = {t.name: t for t in event.outputs}
    if (label := by_name.get("label")) is not None:
        return np.asarray(label.data, dtype=np.int64).reshape(-1)
    if (probs := by_name.get("probabilities")) is not None:
        rows = probs.shape[0]
        return np.asarray(probs.data, dtype=np.float64).reshape(rows, -1).argmax(axis=1)
    return None


def _summaries(w: VersionWindow, rows: list[list[float]], predictions: int) -> np.ndarray | None:
    """Input summaries as the window takes them; None when they do not fit it."""
    try:
        summaries = np.asarray(rows, dtype=np.float32)
    except ValueError:  # ragged rows
        return None
    if summaries.ndim != 2 or not w.fits(summaries, predictions):
        return None
    return summaries


def _credit(w: VersionWindow, labels: np.ndarray, row: int, label: int) -> None:
    """One labelled row for the version that predicted ``labels`` (if it has that row)."""
    if row < len(labels):
        w.add_label(int(labels[row]) == label)


@dataclass(slots=True)
class _Request:
    """One request id: each version's predicted classes (a shadowed request has two: the
    champion's and the candidate's), and the true labels its feedback gave, by row."""

    answers: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)
    feedback: dict[int, int] = field(default_factory=dict)
    rows: int = 0  # the longest answer's rows: feedback for a row past it is out of range


class Monitor:
    """Every version's window, the feedback join and the ignored-event counts."""

    def __init__(self, config: WindowConfig) -> None:
        self.config = config
        self.windows: dict[tuple[str, int], VersionWindow] = {}
        self.infos: dict[tuple[str, int], VersionInfo] = {}
        self._requests: OrderedDict[str, _Request] = OrderedDict()
        self._answers = 0  # entries in _requests' answers, what remembered_requests bounds
        self._pending: OrderedDict[tuple[str, int], tuple[float, int]] = OrderedDict()
        #: reason -> events ignored for it (the handlers turn these into metrics)
        self.ignored: dict[str, int] = {}
        self._evaluated: list[tuple[ModelHealth, DataDrift | None]] = []

    # ------------------------------------------------------------------ versions

    def window(self, name: str, version: int) -> VersionWindow:
        key = (name, version)
        w = self.windows.get(key)
        if w is None:
            info = self.infos.get(key, VersionInfo())
            w = self.windows[key] = VersionWindow(name, version, self.config, info)
        return w

    def set_info(self, name: str, version: int, info: VersionInfo) -> None:
        self.infos[(name, version)] = info
        if (w := self.windows.get((name, version))) is not None:
            w.info = info

    def count_ignored(self, reason: str, n: int = 1) -> None:
        self.ignored[reason] = self.ignored.get(reason, 0) + n

    # ------------------------------------------------------------------ traffic

    def observe_logged(self, event: PredictionLogged, now: float) -> None:
        """Every request of the event (its own and ``more_requests``), in order. A window
        that reaches ``step`` new rows part-way through an event is evaluated there (kept
        for :meth:`evaluate_due`), as if the requests had come one event each."""
        w = self.window(event.model_name, event.version)
        requests = event.requests()
        summaries = self._input_summaries(w, requests)
        # stream answers are counted from inference.completed; shadow answers are not on it
        counted = event.source != "stream" or event.role == "shadow"
        for i, (r, summary) in enumerate(zip(requests, summaries, strict=True)):
            if counted:
                labels = np.asarray(r.predictions, dtype=np.int64)
                w.add(now, labels, r.latency_ms, r.error is not None)
                self._remember(r.request_id, w, labels, now)
            if summary is not None:
                w.add_inputs(now, summary)
            if i + 1 < len(requests) and w.since_evaluation >= w.config.step:
                self._evaluated.append(w.evaluate(now))
        if event.role == "shadow" and event.champion_predictions is not None:
            w.add_agreement(event.predictions, event.champion_predictions)
        accepted = sum(s is not None for s in summaries)
        if accepted and w.info.reference is None:
            self.count_ignored("no_reference", accepted)

    def _input_summaries(
        self, w: VersionWindow, requests: list[PredictionLogged | LoggedRequest]
    ) -> list[np.ndarray | None]:
        """Per request, its input summaries as the window takes them (None: none, or
        malformed, counted): all requests' in one array; request by request if that fails."""
        out: list[np.ndarray | None] = [None] * len(requests)
        carrying = [(i, r.input_summary) for i, r in enumerate(requests) if r.input_summary]
        if not carrying:
            return out
        merged = _summaries(
            w,
            [row for _, rows in carrying for row in rows],
            sum(len(requests[i].predictions) for i, _ in carrying),
        )
        if merged is not None and all(
            len(rows) <= max(len(requests[i].predictions), 1) for i, rows in carrying
        ):
            start = 0
            for i, rows in carrying:  # per request (views): the window keeps requests whole
                out[i] = merged[start : start + len(rows)]
                start += len(rows)
            return out
        for i, rows in carrying:
            out[i] = _summaries(w, rows, len(requests[i].predictions))
            if out[i] is None:
                self.count_ignored("malformed_input_summary")
        return out

    def observe_completed(self, event: InferenceCompleted, now: float) -> None:
        w = self.window(event.model_name, event.model_version)
        labels = predicted_labels(event)
        if labels is None:
            self.count_ignored("no_label_output")
            labels = np.empty(0, dtype=np.int64)
        w.add(now, labels, event.latency_ms, False)
        self._remember(event.request_id, w, labels, now)

    def _remember(self, request_id: str, w: VersionWindow, labels: np.ndarray, now: float) -> None:
        """Remember a version's answer to a request id; feedback that came before it (for
        another version's answer, or waiting for any) credits it now."""
        if not request_id:
            return
        req = self._requests.get(request_id)
        if req is None:
            req = self._requests[request_id] = _Request()
        else:
            self._requests.move_to_end(request_id)
        key = (w.model_name, w.version)
        if key not in req.answers:
            self._answers += 1
            for row, label in req.feedback.items():
                _credit(w, labels, row, label)
        req.answers[key] = labels  # the same version again (redelivered): no new credit
        req.rows = max(req.rows, len(labels))
        for row in range(len(labels)):
            if (waiting := self._pending.pop((request_id, row), None)) is not None:
                self._join(req, row, waiting[1])
        while self._answers > self.config.remembered_requests and len(self._requests) > 1:
            self._answers -= len(self._requests.popitem(last=False)[1].answers)

    # ------------------------------------------------------------------ feedback

    def observe_feedback(self, event: PredictionFeedback, now: float) -> FeedbackOutcome:
        req = self._requests.get(event.request_id)
        if req is None:
            key = (event.request_id, event.row)
            if key in self._pending:
                self.count_ignored("duplicate_feedback")
                return "duplicate"
            self._pending[key] = (now, event.label)
            while len(self._pending) > self.config.pending_feedback:
                self._pending.popitem(last=False)
                self.count_ignored("unknown_request_id")
            return "pending"
        if event.row >= req.rows:
            self.count_ignored("feedback_row_out_of_range")
            return "out_of_range"
        if event.row in req.feedback:  # a duplicate for every version that answered
            self.count_ignored("duplicate_feedback")
            return "duplicate"
        self._join(req, event.row, event.label)
        return "joined"

    def _join(self, req: _Request, row: int, label: int) -> None:
        req.feedback[row] = label
        for key, labels in req.answers.items():
            if (w := self.windows.get(key)) is not None:
                _credit(w, labels, row, label)

    def expire_pending(self, now: float) -> int:
        """Forget feedback whose prediction never came; returns how many."""
        expired = 0
        limit = now - self.config.pending_feedback_s
        while self._pending:
            key, (at, _) = next(iter(self._pending.items()))
            if at > limit:
                break
            del self._pending[key]
            expired += 1
        if expired:
            self.count_ignored("unknown_request_id", expired)
        return expired

    # ------------------------------------------------------------------ evaluation

    def evaluate_due(self, now: float) -> list[tuple[ModelHealth, DataDrift | None]]:
        """Evaluations made part-way through batched events, then the windows due now."""
        done, self._evaluated = self._evaluated, []
        return done + [w.evaluate(now) for w in list(self.windows.values()) if w.due(now)]
