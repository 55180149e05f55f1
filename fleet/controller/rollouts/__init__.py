"""Rollouts: waves, bakes, three-way gate verdicts, automatic rollback, and which replica drives
each rollout (leases)."""
