"""What the edge server, the fleet agent and the fleet controller share, and nothing else:
the build version, the Prometheus conventions and the telemetry wire record. Depends on no
other edgefleet package, so every other one may import it."""
