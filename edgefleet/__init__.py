"""edgefleet's command line and build-time tools (model export). Imports nothing at load."""
