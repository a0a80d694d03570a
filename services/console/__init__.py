"""The web console: server-rendered pages over the mesh's HTTP APIs, live over SSE."""
