"""Model versions: the registry, loading a version, its runtime plan, batcher and statistics."""
