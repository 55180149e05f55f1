"""edgefleet's Python camera example on the generated stubs alone (no edgefleet client library).

Opens a FrameStream, sends JPEG files as frames exactly as they are on disk, prints one line per
answer (result, drop or per-frame error). The same program as the Node, C++, Go and Java ones.

    python client/examples/python/camera.py [--json] HOST:PORT MODEL IMAGE.jpg [IMAGE.jpg ...]

EDGEFLEET_TOKEN, when set, is sent as `authorization: Bearer <token>`. With --json it prints the
conformance scenario's JSON lines (client/README.md, "Conformance") instead of text. Run it from the
repository root after `make protos` (the stubs are the `protos` package); for a full camera
with sources, reconnects and TLS use `edgefleet stream` or `client.stream.FrameStreamClient`.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repository root: `protos`

from protos.edgefleet.v1 import frame_stream_pb2 as pb  # noqa: E402
from protos.edgefleet.v1 import frame_stream_pb2_grpc as pb_grpc  # noqa: E402


def requests(model: str, frames: list[bytes], stop: threading.Event) -> Iterator[pb.StreamRequest]:
    # BLOCK: every frame of a recorded sequence is answered rather than dropped.
    yield pb.StreamRequest(
        open=pb.StreamOpen(
            model_name=model,
            encoding=pb.FRAME_ENCODING_JPEG,
            overload_policy=pb.OVERLOAD_POLICY_BLOCK,
            results=pb.ResultOptions(top_k=3),
            stream_id="python-camera",
        )
    )
    for sequence, data in enumerate(frames, start=1):
        if stop.is_set():  # the server ended the stream: nothing more to send
            return
        frame = pb.Frame(sequence=sequence, capture_time_unix_ns=time.time_ns(), data=data)
        yield pb.StreamRequest(frame=frame)


def print_text(response: pb.StreamResponse) -> bool:
    """Prints one answer; True when it answered a frame with a result."""
    kind = response.WhichOneof("kind")
    if kind == "opened":
        opened = response.opened
        print(
            f"opened stream={opened.stream_id} model={opened.model_name} "
            f"version={opened.model_version}"
        )
    elif kind == "result":
        result = response.result
        labels = ", ".join(f"{label.label} ({label.score:.3f})" for label in result.labels)
        print(f"frame {result.sequence} {result.model_name}/{result.model_version}: {labels}")
        return True
    elif kind == "dropped":
        sequences = ",".join(map(str, response.dropped.sequences))
        print(f"dropped {sequences}: {response.dropped.reason}")
    elif kind == "error":
        error = response.error
        print(f"frame {error.sequence} error {error.code}: {error.message}")
    return False


def json_lines(response: pb.StreamResponse) -> list[dict[str, object]]:
    """The conformance lines for one answer, byte for byte what every other client writes."""
    kind = response.WhichOneof("kind")
    if kind == "opened":
        return [{"opened": response.opened.model_name}]
    if kind == "result":
        labels = response.result.labels
        top = labels[0].class_id if labels else None
        return [{"sequence": response.result.sequence, "class_id": top, "code": 0}]
    if kind == "dropped":
        return [{"sequence": sequence, "dropped": True} for sequence in response.dropped.sequences]
    if kind == "error":
        error = response.error
        return [{"sequence": error.sequence, "class_id": None, "code": error.code}]
    return []


def main(argv: list[str]) -> int:
    as_json = bool(argv) and argv[0] == "--json"
    if as_json:
        argv = argv[1:]
    if len(argv) < 3:
        usage = "usage: camera.py [--json] HOST:PORT MODEL IMAGE.jpg [IMAGE.jpg ...]"
        print(usage, file=sys.stderr)
        return 2
    target, model, *files = argv
    frames = [Path(file).read_bytes() for file in files]
    token = os.environ.get("EDGEFLEET_TOKEN")
    metadata = [("authorization", f"Bearer {token}")] if token else []

    answered, status = 0, grpc.StatusCode.OK
    stop = threading.Event()
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.FrameStreamServiceStub(channel)
        # grpc sends from the request iterator on its own thread while this one reads answers.
        call = stub.Stream(requests(model, frames, stop), metadata=metadata)
        try:
            for response in call:
                if as_json:
                    for line in json_lines(response):
                        print(json.dumps(line, separators=(",", ":")), flush=True)
                else:
                    answered += print_text(response)
        except grpc.RpcError as error:
            status = error.code()
            if not as_json:
                print(f"stream failed: {status.name}: {error.details()}", file=sys.stderr)
        finally:
            stop.set()
    if as_json:
        print(json.dumps({"status": status.value[0]}, separators=(",", ":")))
    elif status is grpc.StatusCode.OK:
        print(f"done: {answered}/{len(frames)} frames answered")
    return 0 if status is grpc.StatusCode.OK else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
