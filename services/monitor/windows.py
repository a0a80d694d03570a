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
from typing import Generic, Literal, TypeVar

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


def _leading(counts: np.ndarray, excess: int) -> int:
    """How many leading requests (``counts`` rows each) can leave a window that holds
    ``excess`` rows more than it needs, requests kept whole."""
    return int(np.searchsorted(np.cumsum(counts), excess, side="right"))


@dataclass
class _Answers:
    """Consecutive requests a window received at one time: per request its predicted rows
    (``counts``), latency and error flag; the predicted classes of all its rows."""

    at: float
    counts: np.ndarray
    labels: np.ndarray
    latency_ms: np.ndarray
    errors: np.ndarray

    def without_first(self, k: int, rows: int) -> _Answers:
        return _Answers(
            self.at, self.counts[k:], self.labels[rows:], self.latency_ms[k:], self.errors[k:]
        )


@dataclass
class _Inputs:
    """Consecutive requests' input summaries (``counts`` rows each, all their rows), and
    their bins in the reference they were binned against, kept from the first evaluation
    that needs them (a row stays in the window for several)."""

    at: float
    counts: np.ndarray
    summaries: np.ndarray
    bins: np.ndarray | None = None
    binned_with: Reference | None = None

    def without_first(self, k: int, rows: int) -> _Inputs:
        return _Inputs(
            self.at,
            self.counts[k:],
            self.summaries[rows:],
            self.bins[rows:] if self.bins is not None else None,
            self.binned_with,
        )

    def bins_in(self, ref: Reference) -> np.ndarray:
        """The rows' bins in ``ref`` (computed now if they were binned in another one)."""
        if self.bins is None or self.binned_with is not ref:
            self.bins, self.binned_with = ref.bin_indices(self.summaries), ref
        return self.bins


C = TypeVar("C", _Answers, _Inputs)


@dataclass
class _Sliding(Generic[C]):
    """The most recent ``size`` rows of whole requests, in chunks: the oldest request
    leaves once the rest still fill the window (and the newest one always stays)."""

    chunks: deque[C] = field(default_factory=deque)
    rows: int = 0
    requests: int = 0

    def add(self, chunk: C, rows: int, size: int) -> None:
        self.chunks.append(chunk)
        self.rows += rows
        self.requests += len(chunk.counts)
        while self.requests > 1 and self.rows >= size:
            first = self.chunks[0]
            k = min(_leading(first.counts, self.rows - size), self.requests - 1)
            if k == 0:
                return
            dropped = int(first.counts[:k].sum())
            if k == len(first.counts):
                self.chunks.popleft()
            else:
                self.chunks[0] = first.without_first(k, dropped)
            self.rows -= dropped
            self.requests -= k

    def first_at(self) -> float | None:
        return self.chunks[0].at if self.chunks else None


def _one(value: float, error: bool) -> tuple[np.ndarray, np.ndarray]:
    return np.array([value], dtype=np.float64), np.array([error])


@dataclass
class VersionWindow:
    model_name: str
    version: int
    config: WindowConfig
    info: VersionInfo = field(default_factory=VersionInfo)
    answers: _Sliding[_Answers] = field(default_factory=_Sliding)
    inputs: _Sliding[_Inputs] = field(default_factory=_Sliding)
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

    def __post_init__(self) -> None:
        #: this window's key in the monitor's maps: one tuple, not one per request
        self.key = (self.model_name, self.version)

    @property
    def rows(self) -> int:
        return self.answers.rows

    @property
    def request_count(self) -> int:
        return self.answers.requests

    @property
    def input_rows(self) -> int:
        return self.inputs.rows

    def add(self, at: float, labels: np.ndarray, latency_ms: float, error: bool) -> None:
        """One request's answer."""
        latency, errors = _one(latency_ms, error)
        self.add_many(at, np.array([len(labels)], dtype=np.int64), labels, latency, errors)

    def add_many(
        self,
        at: float,
        counts: np.ndarray,
        labels: np.ndarray,
        latency_ms: np.ndarray,
        errors: np.ndarray,
    ) -> None:
        """Consecutive requests' answers (``counts`` predicted rows each, ``labels`` all
        their rows)."""
        n = len(labels)
        self.answers.add(_Answers(at, counts, labels, latency_ms, errors), n, self.config.size)
        self.total_rows += n
        self.since_evaluation += int(np.maximum(counts, 1).sum())

    def add_inputs(
        self, at: float, summaries: np.ndarray, counts: np.ndarray | None = None
    ) -> None:
        """Input summaries: of one request, or of consecutive requests (``counts`` rows
        each)."""
        if counts is None:
            counts = np.array([len(summaries)], dtype=np.int64)
        self.inputs.add(_Inputs(at, counts, summaries), len(summaries), self.config.size)

    def fits(self, summaries: np.ndarray, predictions: int) -> bool:
        """At most one summary per predicted row, as many columns as the reference (or as
        the summaries already in the window), all finite."""
        if not 1 <= len(summaries) <= max(predictions, 1):
            return False
        if self.info.reference is not None:
            width = len(self.info.reference.edges)
        elif self.inputs.chunks:
            width = self.inputs.chunks[0].summaries.shape[1]
        else:
            width = summaries.shape[1]
        return summaries.shape[1] == width and bool(np.isfinite(summaries).all())

    def add_agreement(self, mine: np.ndarray, champion: np.ndarray) -> None:
        n = min(len(mine), len(champion))
        self.agreed.extend((mine[:n] == champion[:n]).tolist())
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
        parts = [c.bins_in(ref) for c in self.inputs.chunks if c.summaries.shape[1] == width]
        if sum(len(s) for s in parts) < self.config.min_rows:  # logged before the reference
            return None, {}, "too few rows with inputs of the reference's width"
        per_column = ref.psi(ref.counts_of(np.concatenate(parts)))
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
        labels = np.concatenate([c.labels for c in self.answers.chunks])
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
        chunks = self.answers.chunks
        latencies = (
            np.concatenate([c.latency_ms[~c.errors] for c in chunks]) if chunks else np.empty(0)
        )
        p50 = p95 = p99 = None
        if len(latencies):
            p50, p95, p99 = (round(float(v), 3) for v in np.percentile(latencies, [50, 95, 99]))
        errors = sum(int(c.errors.sum()) for c in chunks)
        requests = self.answers.requests
        firsts = (self.answers.first_at(), self.inputs.first_at())
        starts = [now, *(t for t in firsts if t is not None)]
        window_start = _utc(min(starts))
        pdrift = self.prediction_drift()
        health = ModelHealth(
            model_name=self.model_name,
            version=self.version,
            window_start=window_start,
            window_end=_utc(now),
            count=self.rows,
            requests=requests,
            input_drift=round(score, 6) if score is not None else None,
            input_drift_groups=groups,
            prediction_drift=round(pdrift, 6) if pdrift is not None else None,
            accuracy=(round(sum(self.labelled) / len(self.labelled), 6) if self.labelled else None),
            labelled=len(self.labelled),
            latency_ms_p50=p50,
            latency_ms_p95=p95,
            latency_ms_p99=p99,
            error_rate=round(errors / requests, 6) if requests else 0.0,
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


@dataclass
class _Logged:
    """A prediction.logged.v1's requests (its own, ``more_requests``, ``columns``) as
    columns: per request its id, predicted rows, latency, error flag and summary rows; the
    predicted classes (and a shadow's champion classes) of all; the summary rows of the
    request objects (numbers) and of the columns (an array)."""

    request_ids: list[str]
    counts: np.ndarray
    labels: np.ndarray
    latency_ms: np.ndarray
    errors: np.ndarray
    summary_counts: np.ndarray
    objects: int  # requests that came as objects (the event's own, more_requests): first
    object_summaries: list[list[float]]
    column_summaries: np.ndarray | None
    champion: np.ndarray | None

    @classmethod
    def of(cls, event: PredictionLogged) -> _Logged:
        objects: list[PredictionLogged | LoggedRequest] = [event, *event.more_requests]
        c = event.columns
        ids = [r.request_id for r in objects]
        predictions = [r.predictions for r in objects]
        summaries = [row for r in objects for row in r.input_summary or ()]
        summary_counts = [len(r.input_summary or ()) for r in objects]
        latency = [r.latency_ms for r in objects]
        counts = [len(p) for p in predictions]
        champion: list[int] | None = event.champion_predictions
        columns = None
        if c is not None:
            ids += c.request_ids
            predictions.append(c.predictions)
            counts += c.rows
            latency += c.latency_ms
            if c.summary_rows is not None and c.summary_width is not None:
                summary_counts += c.summary_rows
                columns = np.frombuffer(c.summary_bytes(), dtype="<f4").reshape(-1, c.summary_width)
            else:
                summary_counts += [0] * len(c.request_ids)
            champion = (
                champion + c.champion_predictions
                if champion is not None and c.champion_predictions is not None
                else None
            )
        labels = np.fromiter(
            (label for p in predictions for label in p), dtype=np.int64, count=sum(counts)
        )
        errors = np.zeros(len(ids), dtype=bool)
        errors[: len(objects)] = [r.error is not None for r in objects]
        return cls(
            ids,
            np.asarray(counts, dtype=np.int64),
            labels,
            np.asarray(latency, dtype=np.float64),
            errors,
            np.asarray(summary_counts, dtype=np.int64),
            len(objects),
            summaries,
            columns,
            np.asarray(champion, dtype=np.int64) if champion is not None else None,
        )

    def summary_rows(self, i: int, at: np.ndarray) -> list[list[float]] | np.ndarray:
        """Request ``i``'s summary rows (``at``: where each request's rows start)."""
        if i < self.objects:
            return self.object_summaries[at[i] : at[i + 1]]
        assert self.column_summaries is not None
        base = at[self.objects]
        return self.column_summaries[at[i] - base : at[i + 1] - base]


def _offsets(counts: np.ndarray) -> np.ndarray:
    """Where each request's rows start, and (last) where they all end."""
    out = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=out[1:])
    return out


def _summaries(
    w: VersionWindow, rows: list[list[float]] | np.ndarray, predictions: int
) -> np.ndarray | None:
    """One request's input summaries as the window takes them; None when they do not fit."""
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


#: A request id's answers: each version's predicted classes (a shadowed request has two:
#: the champion's and the candidate's). Plain dicts of arrays: the garbage collector does
#: not track them, which matters with 200,000 of them remembered.
_Answered = dict[tuple[str, int], np.ndarray]


class Monitor:
    """Every version's window, the feedback join and the ignored-event counts."""

    def __init__(self, config: WindowConfig) -> None:
        self.config = config
        self.windows: dict[tuple[str, int], VersionWindow] = {}
        self.infos: dict[tuple[str, int], VersionInfo] = {}
        self._requests: OrderedDict[str, _Answered] = OrderedDict()
        #: the true labels feedback gave a remembered request id, by row
        self._feedback: dict[str, dict[int, int]] = {}
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

    def observe_logged(self, event: PredictionLogged, now: float) -> int:
        """Every request of the event (its own, ``more_requests`` and ``columns``), in
        order, added to the window as arrays. A window that reaches ``step`` new rows
        part-way through an event is evaluated there (kept for :meth:`evaluate_due`), as if
        the requests had come one event each. Returns the event's predicted rows."""
        w = self.window(event.model_name, event.version)
        logged = _Logged.of(event)
        summary_counts, summaries = self._input_summaries(w, logged)
        rows, at_summary = _offsets(logged.counts), _offsets(summary_counts)
        n = len(logged.request_ids)
        # stream answers are counted from inference.completed; shadow answers are not on it
        counted = event.source != "stream" or event.role == "shadow"
        weights = np.maximum(logged.counts, 1)
        start = 0
        while start < n:
            end = n
            if counted:  # up to the request that completes a step, evaluated after it
                room = w.config.step - w.since_evaluation
                end = min(start + int(np.searchsorted(np.cumsum(weights[start:]), room)) + 1, n)
                labels = logged.labels[rows[start] : rows[end]]
                w.add_many(
                    now,
                    logged.counts[start:end],
                    labels,
                    logged.latency_ms[start:end],
                    logged.errors[start:end],
                )
                self._remember_many(logged.request_ids[start:end], w, labels, rows[start : end + 1])
            if summaries is not None and at_summary[end] > at_summary[start]:
                w.add_inputs(
                    now,
                    summaries[at_summary[start] : at_summary[end]],
                    summary_counts[start:end],
                )
            if end < n:
                self._evaluated.append(w.evaluate(now))
            start = end
        if event.role == "shadow" and logged.champion is not None:
            w.add_agreement(logged.labels, logged.champion)
        accepted = int((summary_counts > 0).sum())
        if accepted and w.info.reference is None:
            self.count_ignored("no_reference", accepted)
        return len(logged.labels)

    def _input_summaries(
        self, w: VersionWindow, logged: _Logged
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """The summary rows the window takes, per request (0: none, or malformed, counted),
        and all of them in one array: checked together; request by request if that fails."""
        counts = logged.summary_counts
        if not counts.any():
            return counts, None
        try:
            parts = [np.asarray(logged.object_summaries, dtype=np.float32)]
        except ValueError:  # ragged rows
            parts = []
        if parts and logged.column_summaries is not None:
            if parts[0].size == 0:
                parts = [logged.column_summaries]
            elif parts[0].ndim == 2 and parts[0].shape[1] == logged.column_summaries.shape[1]:
                parts.append(logged.column_summaries)
            else:
                parts = []
        merged = (parts[0] if len(parts) == 1 else np.concatenate(parts)) if parts else None
        if (
            merged is not None
            and merged.ndim == 2
            and len(merged) == counts.sum()
            and bool((counts <= np.maximum(logged.counts, 1)).all())
            and w.fits(merged, len(merged))
        ):
            return counts, merged
        at = _offsets(counts)
        kept: list[np.ndarray] = []
        accepted = counts.copy()
        for i in np.flatnonzero(counts):
            one = _summaries(w, logged.summary_rows(int(i), at), int(logged.counts[i]))
            if one is None:
                self.count_ignored("malformed_input_summary")
                accepted[i] = 0
            else:
                kept.append(one)
        return accepted, (np.concatenate(kept) if kept else None)

    def observe_completed(self, event: InferenceCompleted, now: float) -> int:
        """A stream answer; returns its predicted rows."""
        w = self.window(event.model_name, event.model_version)
        labels = predicted_labels(event)
        if labels is None:
            self.count_ignored("no_label_output")
            labels = np.empty(0, dtype=np.int64)
        w.add(now, labels, event.latency_ms, False)
        self._remember(event.request_id, w, labels)
        return len(labels)

    def _remember_many(
        self, request_ids: list[str], w: VersionWindow, labels: np.ndarray, at: np.ndarray
    ) -> None:
        """:meth:`_remember` for consecutive requests (``labels`` all their rows, request
        ``i``'s from ``at[i] - at[0]`` to ``at[i + 1] - at[0]``). The usual case - new
        request ids, each once, and no feedback waiting - in one dict update."""
        bounds = (at - at[0]).tolist()
        if (
            self._pending
            or len(set(request_ids)) != len(request_ids)
            or not self._requests.keys().isdisjoint(request_ids)
        ):
            for i, request_id in enumerate(request_ids):
                self._remember(request_id, w, labels[bounds[i] : bounds[i + 1]])
            return
        key = w.key
        fresh = {
            request_id: {key: labels[bounds[i] : bounds[i + 1]]}
            for i, request_id in enumerate(request_ids)
            if request_id
        }
        self._requests.update(fresh)
        self._answers += len(fresh)
        self._forget_oldest()

    def _remember(self, request_id: str, w: VersionWindow, labels: np.ndarray) -> None:
        """Remember a version's answer to a request id; feedback that came before it (for
        another version's answer, or waiting for any) credits it now."""
        if not request_id:
            return
        key = w.key
        answers = self._requests.get(request_id)
        if answers is None:
            answers = self._requests[request_id] = {key: labels}
            self._answers += 1
        else:
            self._requests.move_to_end(request_id)
            if key not in answers:
                self._answers += 1
                for row, label in self._feedback.get(request_id, {}).items():
                    _credit(w, labels, row, label)
            answers[key] = labels  # the same version again (redelivered): no new credit
        if self._pending:
            for row in range(len(labels)):
                if (waiting := self._pending.pop((request_id, row), None)) is not None:
                    self._join(request_id, answers, row, waiting[1])
        self._forget_oldest()

    def _forget_oldest(self) -> None:
        """The oldest request ids, past ``remembered_requests`` answers."""
        while self._answers > self.config.remembered_requests and len(self._requests) > 1:
            forgotten, old = self._requests.popitem(last=False)
            self._answers -= len(old)
            self._feedback.pop(forgotten, None)

    # ------------------------------------------------------------------ feedback

    def observe_feedback(self, event: PredictionFeedback, now: float) -> FeedbackOutcome:
        answers = self._requests.get(event.request_id)
        if answers is None:
            key = (event.request_id, event.row)
            if key in self._pending:
                self.count_ignored("duplicate_feedback")
                return "duplicate"
            self._pending[key] = (now, event.label)
            while len(self._pending) > self.config.pending_feedback:
                self._pending.popitem(last=False)
                self.count_ignored("unknown_request_id")
            return "pending"
        # the longest answer's rows: feedback for a row past it is out of range
        if event.row >= max(len(labels) for labels in answers.values()):
            self.count_ignored("feedback_row_out_of_range")
            return "out_of_range"
        if event.row in self._feedback.get(event.request_id, {}):
            self.count_ignored("duplicate_feedback")  # a duplicate for every version
            return "duplicate"
        self._join(event.request_id, answers, event.row, event.label)
        return "joined"

    def _join(self, request_id: str, answers: _Answered, row: int, label: int) -> None:
        self._feedback.setdefault(request_id, {})[row] = label
        for key, labels in answers.items():
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
