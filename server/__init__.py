"""edgefleet edge inference server: a domain core with thin gRPC transports.

Nothing is imported here on purpose: importing `server` must stay cheap and must never pull
in torch or the gRPC stack for code that only needs, say, the manifest.
"""
