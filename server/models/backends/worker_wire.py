"""How the server and a model worker talk over their socket pair: a length-prefixed JSON
header, then each array's raw bytes (no pickle: neither side unpickles what the other sends).
Arrays are received straight into fresh numpy buffers, one copy per direction."""

from __future__ import annotations

import json
import socket
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

_LENGTH = struct.Struct("!I")
_MAX_HEADER = 1 << 20
# A reply larger than this is no model output the server asked for.
_MAX_ARRAY_BYTES = 1 << 32


class PeerGone(ConnectionError):
    """The other end closed the socket (the worker died, or the server went away)."""


def send(sock: socket.socket, header: dict[str, Any], arrays: Sequence[np.ndarray] = ()) -> None:
    contiguous = [np.ascontiguousarray(array) for array in arrays]
    header = {**header, "arrays": [[a.dtype.str, list(a.shape)] for a in contiguous]}
    head = json.dumps(header).encode()
    sock.sendall(_LENGTH.pack(len(head)) + head)
    for array in contiguous:
        if array.nbytes:
            sock.sendall(array.data.cast("B"))


def _recv_into(sock: socket.socket, view: memoryview) -> None:
    while view.nbytes:
        got = sock.recv_into(view)
        if got == 0:
            raise PeerGone("peer closed the socket")
        view = view[got:]


def receive(sock: socket.socket) -> tuple[dict[str, Any], list[np.ndarray]]:
    length = bytearray(_LENGTH.size)
    _recv_into(sock, memoryview(length))
    (size,) = _LENGTH.unpack(length)
    if size > _MAX_HEADER:
        raise PeerGone(f"header of {size} bytes: not a worker message")
    head = bytearray(size)
    _recv_into(sock, memoryview(head))
    header: dict[str, Any] = json.loads(head)
    arrays = []
    for dtype, shape in header.pop("arrays"):
        kind = np.dtype(dtype)
        # Raw bytes become numbers only: an object dtype would make them pointers.
        if kind.hasobject or kind.itemsize * int(np.prod(shape)) > _MAX_ARRAY_BYTES:
            raise PeerGone(f"refused array {dtype} {shape} from the peer")
        array = np.empty(shape, dtype=kind)
        if array.nbytes:
            _recv_into(sock, array.data.cast("B"))
        arrays.append(array)
    return header, arrays
