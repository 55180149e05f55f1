"""Video analytics per camera stream: tracking, zones, lines, masks and events, on the
detections of any detector or pipeline. No transport here: grpc_api converts."""
