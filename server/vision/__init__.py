"""Pixels and detections: decode and preprocess frames, decode model outputs. No model runtime."""
