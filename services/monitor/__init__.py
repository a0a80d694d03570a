"""The monitor: live windows per served model version (drift, accuracy, latency, errors)."""
