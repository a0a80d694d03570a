"""What the registry's operations refuse, mapped to HTTP statuses by the routers."""


class NotFound(LookupError):
    """Unknown model, version, alias or dataset (HTTP 404)."""


class Conflict(Exception):
    """The request cannot apply to the current state, e.g. nothing to roll back to (HTTP 409)."""
