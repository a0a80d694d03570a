"""Pure rollout logic: the steps a candidate version goes through and the criteria that
move it on or send it back.

    shadow ──(criteria met)──▶ canary(pct) ──(criteria met)──▶ promoted
       └───────────── aborted (any criterion failed, a load error, no traffic by the timeout,
                               or a human) ◀───────────────┘

Evidence is the latest ``model.health.v1`` window of the candidate and of the champion
(:class:`HealthFigures`, read from the event by :func:`figures_of`) seen since the current
step began. No database, broker or web framework here: plain values in, a decision out.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

from contracts.events import ModelHealth, RolloutEvidence

Step = Literal["shadow", "canary", "promoted", "aborted"]
RUNNING: tuple[Step, ...] = ("shadow", "canary")
ROLLOUT_ACTOR = "registry-rollout"


class RolloutRefused(ValueError):
    """A rollout that cannot start (the reason is the message)."""


@dataclass(frozen=True)
class RolloutPolicy:
    """The criteria (REGISTRY_ROLLOUT_* settings)."""

    #: candidate rows in the latest window of a step before any decision to advance
    min_predictions: int = 200
    #: shadow: share of rows on which the candidate must agree with the champion
    min_agreement: float = 0.9
    #: live accuracy (where feedback exists): candidate >= champion - tolerance
    accuracy_tolerance: float = 0.01
    #: labelled rows needed before live accuracy counts
    min_labelled: int = 50
    max_error_rate: float = 0.01
    #: candidate p99 <= champion p99 * ratio (when both are known)
    max_latency_ratio: float = 1.5
    canary_percent: float = 10.0
    #: a step that has not seen min_predictions after this long is aborted (no traffic)
    step_timeout_s: float = 3600.0


@dataclass(frozen=True)
class HealthFigures:
    """What the rollout reads from one model.health.v1 window."""

    count: int = 0
    agreement: float | None = None
    compared: int = 0
    accuracy: float | None = None
    labelled: int = 0
    error_rate: float = 0.0
    latency_ms_p99: float | None = None
    load_error: str | None = None
    window_end: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["window_end"] = self.window_end.isoformat() if self.window_end else None
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> HealthFigures | None:
        if not data:
            return None
        values = dict(data)
        end = values.get("window_end")
        values["window_end"] = datetime.fromisoformat(end) if end else None
        return cls(**{k: v for k, v in values.items() if k in cls.__dataclass_fields__})


def figures_of(event: ModelHealth) -> HealthFigures:
    return HealthFigures(
        count=event.count,
        agreement=event.agreement,
        compared=event.compared,
        accuracy=event.accuracy,
        labelled=event.labelled,
        error_rate=event.error_rate,
        latency_ms_p99=event.latency_ms_p99,
        load_error=event.load_error,
        window_end=event.window_end,
    )


@dataclass(frozen=True)
class RolloutState:
    step: Step
    candidate_version: int
    champion_version: int | None
    canary_percent: float
    step_started_at: datetime
    candidate: HealthFigures | None = None
    champion: HealthFigures | None = None
    windows: int = 0


@dataclass(frozen=True)
class Decision:
    step: Step
    reason: str
    evidence: RolloutEvidence = field(default_factory=RolloutEvidence)
    canary_percent: float | None = None


def check_percent(percent: float | None) -> None:
    if percent is not None and not 0 < percent < 100:
        raise RolloutRefused(f"canary share {percent} is outside (0, 100)")


def first_step(*, shadow: bool, canary_percent: float | None) -> Step:
    """``--shadow`` (or neither flag) starts in shadow; ``--canary PCT`` alone starts there."""
    check_percent(canary_percent)
    return "canary" if canary_percent is not None and not shadow else "shadow"


def evidence_of(state: RolloutState) -> RolloutEvidence:
    c, h = state.candidate, state.champion
    return RolloutEvidence(
        predictions=c.count if c else 0,
        champion_predictions=h.count if h else 0,
        agreement=c.agreement if c else None,
        compared=c.compared if c else 0,
        accuracy=c.accuracy if c else None,
        champion_accuracy=h.accuracy if h else None,
        labelled=c.labelled if c else 0,
        error_rate=c.error_rate if c else None,
        champion_error_rate=h.error_rate if h else None,
        latency_ms_p99=c.latency_ms_p99 if c else None,
        champion_latency_ms_p99=h.latency_ms_p99 if h else None,
        windows=state.windows,
    )


def _failures(state: RolloutState, c: HealthFigures, p: RolloutPolicy) -> list[str]:
    """Every criterion the candidate's evidence fails (empty: it passes)."""
    h = state.champion
    failed = []
    if c.error_rate > p.max_error_rate:
        failed.append(f"error rate {c.error_rate:.4f} > {p.max_error_rate}")
    if (
        state.step == "shadow"
        and c.agreement is not None
        and c.compared >= p.min_predictions
        and c.agreement < p.min_agreement
    ):
        failed.append(
            f"agreement with the champion {c.agreement:.4f} < {p.min_agreement} "
            f"on {c.compared} rows"
        )
    labelled = c.accuracy is not None and c.labelled >= p.min_labelled
    compared = h is not None and h.accuracy is not None and h.labelled >= p.min_labelled
    if labelled and compared:
        assert c.accuracy is not None and h is not None and h.accuracy is not None
        if c.accuracy < h.accuracy - p.accuracy_tolerance:
            failed.append(
                f"live accuracy {c.accuracy:.4f} < champion {h.accuracy:.4f} "
                f"- {p.accuracy_tolerance}"
            )
    if (
        c.latency_ms_p99 is not None
        and h is not None
        and h.latency_ms_p99
        and c.latency_ms_p99 > h.latency_ms_p99 * p.max_latency_ratio
    ):
        failed.append(
            f"p99 latency {c.latency_ms_p99:.2f} ms > {p.max_latency_ratio} x champion "
            f"{h.latency_ms_p99:.2f} ms"
        )
    return failed


def evaluate(state: RolloutState, policy: RolloutPolicy, now: datetime) -> Decision | None:
    """The next step of a running rollout, or None to wait for more evidence."""
    if state.step not in RUNNING:
        return None
    evidence = evidence_of(state)
    c = state.candidate
    if c is not None and c.load_error:
        return Decision("aborted", f"the candidate failed to load: {c.load_error}", evidence)
    seen = c.count if c else 0
    waited = (now - state.step_started_at).total_seconds()
    if c is not None and seen > 0:
        failed = _failures(state, c, policy)
        if failed:
            return Decision("aborted", f"{state.step}: " + "; ".join(failed), evidence)
    if seen < policy.min_predictions:
        if waited >= policy.step_timeout_s:
            return Decision(
                "aborted",
                f"{state.step}: {seen} of {policy.min_predictions} predictions after "
                f"{waited:.0f} s (timeout {policy.step_timeout_s:.0f} s): not enough traffic",
                evidence,
            )
        return None
    if state.step == "shadow" and (c is None or c.compared < policy.min_predictions):
        if waited >= policy.step_timeout_s:
            return Decision(
                "aborted",
                f"shadow: agreement measured on {c.compared if c else 0} of "
                f"{policy.min_predictions} rows after {waited:.0f} s (timeout)",
                evidence,
            )
        return None
    passed = f"{seen} predictions" + (
        f", agreement {c.agreement:.4f}" if c and c.agreement is not None else ""
    )
    if c and c.accuracy is not None:
        passed += f", live accuracy {c.accuracy:.4f} ({c.labelled} labelled)"
    if c:
        passed += f", error rate {c.error_rate:.4f}"
    if c and c.latency_ms_p99 is not None:
        passed += f", p99 {c.latency_ms_p99:.2f} ms"
    if state.step == "shadow":
        return Decision(
            "canary",
            f"shadow passed ({passed}): canary at {state.canary_percent:g} %",
            evidence,
            canary_percent=state.canary_percent,
        )
    return Decision("promoted", f"canary at {state.canary_percent:g} % passed ({passed})", evidence)


def observe(state: RolloutState, version: int, figures: HealthFigures) -> RolloutState | None:
    """The state with a new health window folded in; None when it does not concern this
    rollout (another version, or a window that ended before the step began)."""
    if figures.window_end is not None and figures.window_end < state.step_started_at:
        return None
    if version == state.candidate_version:
        return replace(state, candidate=figures, windows=state.windows + 1)
    if version == state.champion_version:
        return replace(state, champion=figures)
    return None
