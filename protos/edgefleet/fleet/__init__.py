"""Generated gRPC code lives beside the .proto sources; run `make protos`."""
