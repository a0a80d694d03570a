"""``python -m services.monitor``: serve the monitor."""

from __future__ import annotations

from libs.messaging import KafkaSettings
from libs.service import serve
from services.monitor.app import build_app
from services.monitor.settings import MonitorSettings


def main() -> None:
    settings = MonitorSettings()
    kafka = KafkaSettings()
    serve(build_app(settings, kafka), settings, kafka)


if __name__ == "__main__":
    main()
