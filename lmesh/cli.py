"""Entry point of the ``lmesh`` console script."""

from lmesh import commands as _commands  # noqa: F401
from lmesh.app import app
from lmesh.commands import load_all

load_all()

__all__ = ["app"]
