"""``python -m services.console``: serve the web console (HTTP on 8107)."""

from __future__ import annotations

from libs.messaging import KafkaSettings
from libs.service import load_settings, serve
from services.console.app import build_app
from services.console.settings import ConsoleSettings


def main() -> None:
    settings = load_settings(ConsoleSettings, "console")
    kafka = KafkaSettings()
    serve(build_app(settings, kafka), settings, kafka)


if __name__ == "__main__":
    main()
