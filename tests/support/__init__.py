"""Test support: real HTTP servers, real Kafka consumers, polling with deadlines."""
