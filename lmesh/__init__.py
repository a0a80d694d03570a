"""The ``lmesh`` command line: run the mesh locally and talk to it."""
