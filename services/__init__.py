"""The five services of the mesh; each runs as `python -m services.<name>`."""
