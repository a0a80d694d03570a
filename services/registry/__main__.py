"""``python -m services.registry``: serve the registry (HTTP on 8104) and its consumers."""

from __future__ import annotations

from libs.messaging import KafkaSettings
from libs.service import load_settings, serve
from services.registry.app import build_app
from services.registry.settings import RegistrySettings


def main() -> None:
    settings = load_settings(RegistrySettings, "registry")
    kafka = KafkaSettings()
    serve(build_app(settings, kafka), settings, kafka)


if __name__ == "__main__":
    main()
