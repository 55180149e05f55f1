"""The fleet controller: device registry, enrollment CA, bundle store and rollout engine.

Layers, top to bottom (checked by import-linter):

- app.py: wiring; settings.py: its typed settings.
- api/: the transports (gRPC servicers and their authorization, protobuf conversion, the
  dashboard); metrics.py: the Prometheus view.
- desired.py, telemetry.py, replication/inbound.py: what agents and other replicas report.
- rollouts/: the rollout subsystem (one context, one module per concern).
- devices.py, bundles.py, webhooks.py, audit.py, live.py, replication/: the fleet's state
  and this replica's part in a shared fleet.
- store/: persistence (the protocol, the rules both SQL dialects share, SQLite, PostgreSQL).
"""
