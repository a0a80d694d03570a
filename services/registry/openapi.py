"""Export the registry's OpenAPI document: ``python -m services.registry.openapi [PATH]``
(default contracts/openapi/registry.json). A test fails when the checked-in copy is stale."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pydantic import SecretStr

from services.registry.settings import RegistrySettings

DEFAULT_PATH = Path(__file__).resolve().parents[2] / "contracts" / "openapi" / "registry.json"


def render() -> str:
    """The document as checked in (building the app connects to nothing)."""
    from services.registry.app import build_app

    app = build_app(RegistrySettings(dev_mode=True, token=SecretStr("")))
    return json.dumps(app.openapi(), indent=2, sort_keys=True) + "\n"


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render())
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
