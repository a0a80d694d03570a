"""``python -m services.registry``: serve the registry (HTTP on 8104) and its consumers."""

from __future__ import annotations

import sys

from pydantic import ValidationError

from libs.messaging import KafkaSettings
from libs.service import serve
from services.registry.app import build_app
from services.registry.settings import RegistrySettings


def main() -> None:
    try:
        settings = RegistrySettings()
    except ValidationError as exc:
        reasons = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
        print(f"error: registry settings: {reasons}", file=sys.stderr)
        raise SystemExit(2) from None
    kafka = KafkaSettings()
    serve(build_app(settings, kafka), settings, kafka)


if __name__ == "__main__":
    main()
