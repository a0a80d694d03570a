"""What a chaos run sent and what the mesh answered: pure accounting, no broker, no processes.

The chaos driver (:mod:`benchmarks.chaos`) records what it did (batches of upstream records,
deliberately bad inputs, HTTP predictions, kills and outages) in a :class:`ChaosLedger`;
at the end it reads the mesh's topics from the beginning and :meth:`ChaosLedger.account`
says, hop by hop, what became of it:

- **training**: every run id requested on ``training.requested.v1`` (by the driver or by
  the registry's auto-retrain) answered exactly once, by ``training.completed.v1`` or
  ``training.failed.v1``;
- **events lost**: batches sent but never a dataset version, versions ingested but never
  prepared, runs completed but never registered (goal: 0 at every hop);
- **predictions**: HTTP predictions that failed inside each restart window and outside all
  of them;
- **dead letters**: per DLQ, distinct source messages (a redelivered message dead-lettered
  twice counts once) against the deliberately bad inputs sent to that service.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: The topics the account reads (besides the dead-letter queues).
ACCOUNT_TOPICS = (
    "training.requested.v1",
    "training.completed.v1",
    "training.failed.v1",
    "dataset.ingested.v1",
    "dataset.prepared.v1",
    "model.registered.v1",
    "model.promoted.v1",
)


@dataclass(frozen=True)
class Prediction:
    """One HTTP prediction of the load: when its outcome came (monotonic seconds), whether
    it was answered (200), and by which model version."""

    at: float
    ok: bool
    version: str | None = None
    error: str | None = None


@dataclass
class Disruption:
    """A SIGKILL of one service (or an outage of a dependency) and how long until it was
    back: ``back_at`` is when the supervisor had restarted it and it answered /healthz."""

    target: str
    moment: str
    started_at: float
    back_at: float | None = None
    restarts_after: int | None = None
    kind: str = "kill"  # kill | outage

    def contains(self, at: float, grace_s: float) -> bool:
        end = self.back_at if self.back_at is not None else float("inf")
        return self.started_at <= at <= end + grace_s


@dataclass
class ChaosLedger:
    """What the driver sent; :meth:`account` compares it with what the topics hold."""

    stream_dataset: str
    batch_records: int
    batches_sent: int = 0
    bad_inputs: Counter[str] = field(default_factory=Counter)  # service -> deliberately bad
    training_sent: list[str] = field(default_factory=list)  # run ids the driver requested
    predictions: list[Prediction] = field(default_factory=list)
    disruptions: list[Disruption] = field(default_factory=list)

    def account(
        self,
        topics: Mapping[str, Sequence[Mapping[str, Any]]],
        dead_letters: Mapping[str, Sequence[Mapping[str, Any]]],
        *,
        grace_s: float = 2.0,
    ) -> dict[str, Any]:
        """``topics``: decoded values of :data:`ACCOUNT_TOPICS`, from the beginning;
        ``dead_letters``: service -> its DLQ's letters (``DeadLetter`` fields)."""
        training = account_training(topics, self.training_sent)
        lost = self.events_lost(topics)
        letters = account_dead_letters(dead_letters, self.bad_inputs)
        return {
            "training": training,
            "events_lost": lost,
            "predictions": account_predictions(self.predictions, self.disruptions, grace_s),
            "dead_letters": letters,
            "disruptions": [
                {
                    "target": d.target,
                    "kind": d.kind,
                    "moment": d.moment,
                    "back_after_s": (
                        round(d.back_at - d.started_at, 2) if d.back_at is not None else None
                    ),
                    "restarts_after": d.restarts_after,
                }
                for d in self.disruptions
            ],
            "ok": (
                lost["total"] == 0
                and not lost["runs_registered_twice"]
                and not lost["stream_versions_not_one_batch"]
                and training["exactly_once"] == training["requested"]
                and not training["missing_driver_requests"]
                and letters["unexpected"] == 0
                and letters["missing"] == 0
                and all(d.back_at is not None for d in self.disruptions)
            ),
        }

    def events_lost(self, topics: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, Any]:
        ingested = _by_version(topics.get("dataset.ingested.v1", ()), self.stream_dataset)
        prepared_stream = {
            m["prepared"]["version"]
            for m in topics.get("dataset.prepared.v1", ())
            if m.get("prepared", {}).get("dataset") == self.stream_dataset
        }
        prepared_all = {
            (m["prepared"]["dataset"], m["prepared"]["version"])
            for m in topics.get("dataset.prepared.v1", ())
            if isinstance(m.get("prepared"), dict)
        }
        ingested_all = {
            (m["dataset"], m["version"])
            for m in topics.get("dataset.ingested.v1", ())
            if "dataset" in m and "version" in m
        }
        completed = _run_ids(topics.get("training.completed.v1", ()))
        registered = _run_ids(topics.get("model.registered.v1", ()))
        versions_of_run: dict[str, set[Any]] = defaultdict(set)
        for m in topics.get("model.registered.v1", ()):
            if isinstance(m.get("run_id"), str):
                versions_of_run[m["run_id"]].add((m.get("model_name"), m.get("version")))
        wrong_size = sorted(v for v, n in ingested.items() if n != self.batch_records)
        hops = {
            # a closed batch of upstream records that never became a dataset version
            "ingest": max(0, self.batches_sent - len(ingested)),
            # a dataset version announced but never prepared
            "preprocess": len(ingested_all - prepared_all),
            # a finished run the registry never recorded as a model version
            "registry": len(completed - registered),
        }
        return {
            **hops,
            "total": sum(hops.values()),
            "stream_batches_sent": self.batches_sent,
            "stream_versions": len(ingested),
            "stream_versions_prepared": len(prepared_stream & set(ingested)),
            "stream_versions_not_one_batch": wrong_size,
            # a run recorded as two model versions (a completion handled twice)
            "runs_registered_twice": sorted(r for r, v in versions_of_run.items() if len(v) > 1),
        }


def _by_version(messages: Iterable[Mapping[str, Any]], dataset: str) -> dict[int, int]:
    """version -> record count of ``dataset``'s versions (an announcement repeated after a
    crash is the same version)."""
    return {
        int(m["version"]): int(m.get("record_count", 0))
        for m in messages
        if m.get("dataset") == dataset and "version" in m
    }


def _run_ids(messages: Iterable[Mapping[str, Any]]) -> set[str]:
    """The run ids of well-formed messages (a deliberately bad one may carry any value)."""
    return {m["run_id"] for m in messages if isinstance(m.get("run_id"), str)}


def account_training(
    topics: Mapping[str, Sequence[Mapping[str, Any]]], driver_run_ids: Sequence[str]
) -> dict[str, Any]:
    """Every requested run id and how many answers (completed + failed) it got."""
    requested = _run_ids(topics.get("training.requested.v1", ()))
    answers: Counter[str] = Counter()
    outcome: dict[str, Counter[str]] = defaultdict(Counter)
    for topic in ("training.completed.v1", "training.failed.v1"):
        for m in topics.get(topic, ()):
            if isinstance(m.get("run_id"), str):
                answers[m["run_id"]] += 1
                outcome[topic.split(".")[1]][m["run_id"]] += 1
    return {
        "requested": len(requested),
        "by_driver": len(driver_run_ids),
        "exactly_once": sum(1 for r in requested if answers[r] == 1),
        "completed": len(set(outcome["completed"]) & requested),
        "failed": len(set(outcome["failed"]) & requested),
        "unanswered": sorted(r for r in requested if answers[r] == 0),
        "answered_more_than_once": {r: answers[r] for r in sorted(requested) if answers[r] > 1},
        "missing_driver_requests": sorted(set(driver_run_ids) - requested),
        "failure_reasons": sorted(
            {
                str(m.get("reason", ""))[:120]
                for m in topics.get("training.failed.v1", ())
                if m.get("run_id") in requested
            }
        ),
    }


def account_predictions(
    predictions: Sequence[Prediction], disruptions: Sequence[Disruption], grace_s: float
) -> dict[str, Any]:
    """Failed predictions inside each disruption's window (kill → healthy again + grace),
    and outside every window."""
    windows = []
    inside: set[int] = set()
    for d in disruptions:
        hits = [i for i, p in enumerate(predictions) if d.contains(p.at, grace_s)]
        inside.update(hits)
        failed = [predictions[i] for i in hits if not predictions[i].ok]
        windows.append(
            {
                "target": d.target,
                "sent": len(hits),
                "failed": len(failed),
                "errors": dict(Counter(p.error or "?" for p in failed).most_common(3)),
            }
        )
    outside = [p for i, p in enumerate(predictions) if i not in inside]
    failed_outside = [p for p in outside if not p.ok]
    return {
        "sent": len(predictions),
        "answered": sum(p.ok for p in predictions),
        "failed": sum(not p.ok for p in predictions),
        "versions_seen": len({p.version for p in predictions if p.ok}),
        "per_window": windows,
        "failed_outside_windows": len(failed_outside),
        "errors_outside_windows": dict(
            Counter(p.error or "?" for p in failed_outside).most_common(3)
        ),
    }


def account_dead_letters(
    dead_letters: Mapping[str, Sequence[Mapping[str, Any]]], expected: Mapping[str, int]
) -> dict[str, Any]:
    """Distinct dead-lettered source messages per service against the deliberately bad ones.
    A letter without a source position counts by its payload."""
    per_service: dict[str, Any] = {}
    unexpected = missing = 0
    for service in sorted(set(dead_letters) | set(expected)):
        letters = dead_letters.get(service, ())
        sources = {_source(letter) for letter in letters}
        want = int(expected.get(service, 0))
        extra = max(0, len(sources) - want)
        unexpected += extra
        missing += max(0, want - len(sources))
        if letters or want:
            per_service[service] = {
                "letters": len(letters),
                "distinct_sources": len(sources),
                "deliberate": want,
                "reasons": dict(
                    Counter(str(x.get("reason", ""))[:80] for x in letters).most_common(5)
                ),
            }
    return {"per_service": per_service, "unexpected": unexpected, "missing": missing}


def _source(letter: Mapping[str, Any]) -> tuple[Any, ...]:
    if letter.get("partition") is not None and letter.get("offset") is not None:
        return (letter.get("source_topic"), letter["partition"], letter["offset"])
    return (letter.get("source_topic"), letter.get("payload"))
