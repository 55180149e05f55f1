"""Prometheus metrics and rate-limited failure logging, shared by every layer above."""
