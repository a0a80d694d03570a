"""The typer application every ``lmesh`` command registers on."""

import typer

app = typer.Typer(
    name="lmesh",
    help="Lepton Mesh: ingest → preprocess → train → register → serve, over Kafka.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
