"""Support shared by the tests and the benchmarks. Not part of the installed package: nothing
in server/, client/ or fleet/ imports it. Fixtures stay in the tests' conftest.py files; they
call into here.

processes        spawn a child, wait for its port file or readiness, SIGTERM then SIGKILL, log
services         PostgreSQL, nginx, headless Chromium and an RTSP camera (GStreamer) from Debian
                 packages
repositories     the checkout's root, the built default models, copies of them
model_writer     writes a generated ONNX model as a real version (manifest with hashes)
media            photos, JPEG/PNG bytes, camera frames, a test video
edge             EdgeServer in this process, `edgefleet serve` as a child process
kserve           KServe v2 request builders and response readers
camera           FrameStream requests from photos (a test camera)
hostile          image bombs and a seeded corpus of malformed requests
slow_model       a camera model calibrated to ~20 ms per frame on this machine
tiny_models      tiny classifiers, one that int8 quantization breaks
hardware         recorded device profiles, a fake `/`, an NVML stand-in
faces            the MTCNN weights and networks, the `faces` pipeline's models
export           the export CLI in-process, repository snapshots
export_samples   model factories handed to `edgefleet export`
certificates     a private test PKI (CA, server, client, rogue client)
camera_examples  the camera example in every language, built by `make stubs`' script
display          the client's tables rendered as text
fleet            controller settings, edge nodes with agents in this process, rollouts
fleet_models     the tiny `tiny` model fleet nodes serve, and a poisoned one
fleet_processes  `edgefleet serve --controller`, controllers and replicas, fleetctl as processes
fleet_sim        thousands of simulated agents for bench/bench_fleet.py
programs/        small programs tests run as their own process
"""
