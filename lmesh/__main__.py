from lmesh.cli import app

app()
