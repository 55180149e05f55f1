"""Fleet control: the controller, the device agent, signed model bundles and `fleetctl`."""
