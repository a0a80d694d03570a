"""``python -m services.preprocess``: serve the preprocess service."""

from __future__ import annotations

from libs.messaging import KafkaSettings
from libs.service import serve
from services.preprocess.app import build_app
from services.preprocess.settings import PreprocessSettings


def main() -> None:
    settings = PreprocessSettings()
    kafka = KafkaSettings()
    serve(build_app(settings, kafka), settings, kafka)


if __name__ == "__main__":
    main()
