"""What every test of the predictor's stream worker sets up: its uuid-named request and
answer topics and consumer group, and the state (``GET /stream``) in which it serves."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from contracts.events import InferenceRequested
from contracts.topics import Topic
from libs.messaging.admin import create_topics
from libs.messaging.settings import KafkaSettings


@dataclass(frozen=True)
class StreamTopics:
    requests: str
    completed: str
    group: str

    @classmethod
    def named(cls, unique: str) -> StreamTopics:
        return cls(f"infer-req-{unique}", f"infer-done-{unique}", f"predictor-stream-{unique}")

    async def create(self, kafka: KafkaSettings, *, partitions: int) -> None:
        await create_topics(
            kafka,
            [
                Topic(n, InferenceRequested, partitions, "key", "test topic")
                for n in (self.requests, self.completed)
            ],
        )

    def worker_settings(self) -> dict[str, str]:
        """The worker's settings (PredictorSettings fields) for these topics and group."""
        return {
            "stream_topic": self.requests,
            "stream_completed_topic": self.completed,
            "stream_group": self.group,
        }


def serves_first_version(state: dict[str, Any], name: str) -> bool:
    """Whether the worker, by its ``GET /stream`` state, answers with version 1 of ``name``
    and follows promotions (so a promotion from now on reaches it)."""
    return state["serving"].get(name) == 1 and state["promotions_followed"]
