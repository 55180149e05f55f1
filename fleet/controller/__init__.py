"""The fleet controller: device registry, enrollment CA, bundle store and rollout engine."""
