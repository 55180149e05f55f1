"""`fleetctl`: the operator's command line for the fleet controller."""
