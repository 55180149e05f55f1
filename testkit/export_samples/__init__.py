"""Model factories for `edgefleet export` in the tests and bench/bench_export.py: control flow,
dynamic sizes, and modules that cannot be scripted or exported to ONNX."""
