"""The device agent: runs beside an EdgeServer, in its process and event loop."""
