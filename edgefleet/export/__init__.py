"""`edgefleet export`: from a PyTorch module to a verified edge model in the repository.

Imports nothing at load; torch is imported by the modules that need it.
"""
