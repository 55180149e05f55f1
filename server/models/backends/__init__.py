"""Model runtimes behind one interface. Each backend module imports its runtime lazily."""
