"""Entry point of the ``lmesh`` console script: every module in lmesh/commands registers
its commands on the one typer app."""

from lmesh.app import app
from lmesh.commands import load_all

load_all()

__all__ = ["app"]
