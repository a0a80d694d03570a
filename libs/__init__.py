"""Libraries shared by every service: messaging, telemetry, storage, settings."""
