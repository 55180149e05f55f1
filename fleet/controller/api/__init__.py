"""The controller's transports: gRPC servicers, their authorization, protobuf conversion, and
the operator dashboard. Thin: they translate and delegate to the services below."""
