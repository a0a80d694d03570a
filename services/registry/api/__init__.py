"""HTTP API of the registry: one router per resource."""
