"""Lepton Mesh contracts: every event and topic the services exchange.

Services import these models; they never copy them. Producers build events with
``extra="forbid"`` (a misspelt field is an error at the producer); consumers decode
with :func:`decode_event`, which ignores unknown fields so that a newer producer
does not break an older consumer.
"""

from contracts.events import *  # noqa: F403  (the public surface is events.__all__)
from contracts.events import __all__ as _events_all
from contracts.topics import TOPICS, Topic, dlq_topic, topic_for

__all__ = [*_events_all, "TOPICS", "Topic", "dlq_topic", "topic_for"]
