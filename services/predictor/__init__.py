"""The predictor service."""
