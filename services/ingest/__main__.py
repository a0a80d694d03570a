"""``python -m services.ingest``: serve the ingest service."""

from __future__ import annotations

from libs.messaging import KafkaSettings
from libs.service import load_settings, serve
from services.ingest.app import build_app
from services.ingest.settings import IngestSettings


def main() -> None:
    settings = load_settings(IngestSettings, "ingest")
    kafka = KafkaSettings()
    serve(build_app(settings, kafka), settings, kafka)


if __name__ == "__main__":
    main()
