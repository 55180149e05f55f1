"""Thin gRPC transports over InferenceCore: convert, delegate, map errors."""
