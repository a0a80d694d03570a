"""``python -m services.trainer``: one trainer worker (HTTP on TRAINER_HTTP_PORT, 8103)."""

from __future__ import annotations

from libs.messaging import KafkaSettings
from libs.service import serve
from services.trainer.app import build_app
from services.trainer.settings import TrainerSettings


def main() -> None:
    settings = TrainerSettings()
    kafka = KafkaSettings()
    serve(build_app(settings, kafka), settings, kafka)


if __name__ == "__main__":
    main()
