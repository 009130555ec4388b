"""The wire format between the grader and the worker that runs student code: data only, never code.

A message is one frame: an 8-byte big-endian length of a JSON header, the header, then the raw buffers it
refers to (each with its own 8-byte length). Reading a frame parses JSON and copies bytes, nothing else:
there is no pickle and no `torch.load` anywhere on the grader's side, so a hostile worker can send wrong
values but never make the grader run anything.

Values carried (`encode` / `decode`): None, bool, int, float (also nan/inf), str, bytes, list, tuple,
dict (any carried keys), set, `torch.Tensor` (dtype, shape, raw bytes), `numpy.ndarray` (same),
`numpy.memmap` (its file, offset, dtype and shape: the receiver maps the same file), numpy scalars,
`torch.dtype`, `torch.device`, `torch.Size`, `pathlib.Path`, finite iterators, and handles of worker-side objects
(`Handle`). Anything else is refused by the sender (`encode` calls `on_other`, which may turn it into a
handle), and an unknown tag is refused by the receiver.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_FRAME_BYTES = 1 << 30  # a reply bigger than this is a broken (or hostile) worker
MAX_DEPTH = 64
_LEN = struct.Struct(">Q")
_DTYPE_NAMES = (
    "float64",
    "float32",
    "float16",
    "bfloat16",
    "int64",
    "int32",
    "int16",
    "int8",
    "uint8",
    "bool",
    "complex64",
    "complex128",
)
# NOTE: torch and numpy are imported only once a value needs them: the grader's own tests of toy
# submissions (and their fork server) then never pay torch's import.


def _torch() -> Any:
    import torch

    return torch


def _np() -> Any:
    import numpy

    return numpy


def _dtype(name: str) -> Any:
    if name not in _DTYPE_NAMES:
        raise WireError(f"unknown tensor dtype {name!r}")
    return getattr(_torch(), name)


class WireError(ValueError):
    """A frame or value that does not follow the wire format."""


@dataclass(frozen=True)
class Handle:
    """A reference to an object that lives in the worker (a Tokenizer, an optimizer class...)."""

    id: int
    type_name: str = ""


def encode(
    value: Any,
    buffers: list[bytes],
    on_other: Callable[[Any], Any] | None = None,
    map_path: Callable[[str], str] = str,
    depth: int = 0,
) -> Any:
    """The JSON-able form of `value`; tensors' bytes are appended to `buffers` and referred to by index.

    `on_other` turns a value of any other type into one that is carried (e.g. a `Handle`); `map_path`
    rewrites the file of a `Path` or memmap into one the receiver can open.
    """
    if depth > MAX_DEPTH:
        raise WireError("value nested too deeply")
    enc = lambda v: encode(v, buffers, on_other, map_path, depth + 1)  # noqa: E731
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value if abs(value) < 2**53 else {"$int": str(value)}
    if isinstance(value, float):
        return value if math.isfinite(value) else {"$float": repr(value)}
    if isinstance(value, (bytes, bytearray, memoryview)):
        buffers.append(bytes(value))
        return {"$bytes": len(buffers) - 1}
    array = _encode_array(value, buffers, map_path)
    if array is not None:
        return array
    if isinstance(value, (list, tuple)) and value and all(type(v) is bytes for v in value):
        return _encode_bytes_list(value, buffers)  # a vocabulary's values, a merge: one buffer, not many
    if isinstance(value, tuple):
        return {"$tuple": [enc(v) for v in value]}
    if isinstance(value, list):
        if value and all(type(v) is tuple and v and all(type(b) is bytes for b in v) for v in value):
            return {
                "$tuples": _encode_bytes_list([b for v in value for b in v], buffers),
                "arity": [len(v) for v in value],
            }
        return [enc(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return {"$set": [enc(v) for v in value]}
    if isinstance(value, dict):
        if value and all(type(v) is bytes for v in value.values()):
            return {"$bytesdict": enc(list(value.keys())), "values": _encode_bytes_list(list(value.values()), buffers)}
        return {"$dict": [[enc(k), enc(v)] for k, v in value.items()]}
    if isinstance(value, Path):
        return {"$path": map_path(str(value))}
    if isinstance(value, Iterator) and not isinstance(value, (str, bytes)):
        return {"$iter": [enc(v) for v in value]}  # a one-shot iterator stays one (drained: finite ones only)
    if isinstance(value, Handle):
        return {"$handle": value.id, "type": value.type_name}
    if on_other is not None:
        return enc(on_other(value))
    raise WireError(f"cannot carry a value of type {type(value).__name__}")


def _encode_array(value: Any, buffers: list[bytes], map_path: Callable[[str], str]) -> Any:
    """Tensors, arrays, memmaps, numpy scalars and torch's small types; None for anything else."""
    torch, np = sys.modules.get("torch"), sys.modules.get("numpy")  # NOTE: loaded already if value is one
    if torch is not None:
        if isinstance(value, torch.Tensor):
            return _encode_tensor(value, buffers)
        if isinstance(value, torch.Size):
            return {"$size": [int(d) for d in value]}
        if isinstance(value, torch.dtype):
            return {"$dtype": str(value).removeprefix("torch.")}
        if isinstance(value, torch.device):
            return {"$device": str(value)}
    if np is None:
        return None
    if (
        isinstance(value, np.memmap)
        and getattr(value, "filename", None) is not None
        and isinstance(value.base, mmap.mmap)
    ):
        return {
            "$memmap": map_path(os.fspath(value.filename)),
            "offset": int(value.offset),
            "dtype": value.dtype.str,
            "shape": list(value.shape),
            "mode": "r",
        }
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            raise WireError("numpy arrays of Python objects are not carried")
        buffers.append(np.ascontiguousarray(value).tobytes())
        return {"$ndarray": len(buffers) - 1, "dtype": value.dtype.str, "shape": list(value.shape)}
    if isinstance(value, np.generic):
        return encode(value.item(), buffers)
    return None


def _encode_bytes_list(items: list[bytes] | tuple[bytes, ...], buffers: list[bytes]) -> dict[str, Any]:
    buffers.append(b"".join(items))
    return {"$byteslist": len(buffers) - 1, "lengths": [len(b) for b in items], "tuple": isinstance(items, tuple)}


def _decode_bytes_list(value: dict[str, Any], buffers: list[bytes]) -> list[bytes]:
    raw, lengths = _buffer(buffers, value["$byteslist"]), value.get("lengths")
    if not isinstance(lengths, list) or sum(int(n) for n in lengths) != len(raw):
        raise WireError("a byte-string list whose lengths do not add up")
    items, start = [], 0
    for n in lengths:
        items.append(raw[start : start + int(n)])
        start += int(n)
    return items


def _encode_tensor(value: Any, buffers: list[bytes]) -> dict[str, Any]:
    torch = _torch()
    name = str(value.dtype).removeprefix("torch.")
    if name not in _DTYPE_NAMES:
        raise WireError(f"cannot carry a tensor of dtype {value.dtype}")
    flat = value.detach().to("cpu").contiguous().reshape(-1)
    buffers.append(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return {
        "$tensor": len(buffers) - 1,
        "dtype": name,
        "shape": list(value.shape),
        "requires_grad": bool(value.requires_grad),
    }


def decode(
    value: Any,
    buffers: list[bytes],
    on_handle: Callable[[Handle], Any] | None = None,
    memmaps: bool = False,
    depth: int = 0,
) -> Any:
    """The inverse of `encode`: plain data, tensors and arrays (copied from `buffers`), handles.

    `memmaps` allows mapping the files that memmaps name (the worker's side; never the grader's).
    """
    if depth > MAX_DEPTH:
        raise WireError("value nested too deeply")
    dec = lambda v: decode(v, buffers, on_handle, memmaps, depth + 1)  # noqa: E731
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list):
        return [dec(v) for v in value]
    if not isinstance(value, dict) or len(value) == 0:
        raise WireError(f"unexpected JSON value of type {type(value).__name__}")
    tag = next(iter(value))
    body = value[tag]
    special = _decode_data(tag, value, buffers, memmaps, dec)
    if special is not _NOTHING:
        return special
    simple: dict[str, Callable[[Any], Any]] = {
        "$int": lambda b: int(str(b)),
        "$float": lambda b: float(str(b)),
        "$bytes": lambda b: _buffer(buffers, b),
        "$size": lambda b: _torch().Size([int(d) for d in b]),
        "$tuple": lambda b: tuple(dec(v) for v in b),
        "$iter": lambda b: iter([dec(v) for v in b]),
        "$set": lambda b: {dec(v) for v in b},
        "$dict": lambda b: {dec(k): dec(v) for k, v in b},
        "$dtype": lambda b: _dtype(str(b)),
        "$device": lambda b: _torch().device(str(b)),
        "$path": lambda b: Path(str(b)),
    }
    if tag in simple:
        try:
            return simple[tag](body)
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise WireError(f"malformed {tag} value: {e}") from e
    if tag == "$handle":
        handle = Handle(int(body), str(value.get("type", "")))
        return on_handle(handle) if on_handle is not None else handle
    raise WireError(f"unknown tag {tag!r}")


_NOTHING = object()


def _decode_data(
    tag: str, value: dict[str, Any], buffers: list[bytes], memmaps: bool, dec: Callable[[Any], Any]
) -> Any:
    """Tensors, arrays, memmaps and packed byte strings; `_NOTHING` for the other tags."""
    body = value[tag]
    if tag == "$tensor":
        return _decode_tensor(value, _buffer(buffers, body))
    np = _np() if tag in ("$ndarray", "$memmap") else None
    if tag == "$ndarray":
        array = np.frombuffer(_buffer(buffers, body), dtype=np.dtype(value["dtype"])).copy()
        return array.reshape([int(d) for d in value["shape"]])
    if tag == "$byteslist":
        items = _decode_bytes_list(value, buffers)
        return tuple(items) if value.get("tuple") else items
    if tag == "$tuples":
        flat, arity = iter(_decode_bytes_list(body, buffers)), value.get("arity", [])
        return [tuple(next(flat) for _ in range(int(n))) for n in arity]
    if tag == "$bytesdict":
        keys, values = dec(body), _decode_bytes_list(value.get("values", {}), buffers)
        if not isinstance(keys, list) or len(keys) != len(values):
            raise WireError("a bytes dictionary whose keys and values do not pair up")
        return dict(zip(keys, values))
    if tag == "$memmap" and memmaps:
        shape = tuple(int(d) for d in value["shape"])
        return np.memmap(str(body), dtype=np.dtype(value["dtype"]), mode="r", offset=int(value["offset"]), shape=shape)
    return _NOTHING


def _buffer(buffers: list[bytes], index: Any) -> bytes:
    if not isinstance(index, int) or not 0 <= index < len(buffers):
        raise WireError(f"reference to a missing buffer {index!r}")
    return buffers[index]


def _decode_tensor(value: dict[str, Any], raw: bytes) -> Any:
    torch = _torch()
    dtype = _dtype(str(value.get("dtype")))
    shape = [int(d) for d in value.get("shape", [])]
    count = math.prod(shape)
    if len(raw) != count * torch.empty((), dtype=dtype).element_size():
        raise WireError(f"tensor of shape {shape} and dtype {dtype} does not fit its {len(raw)} bytes")
    flat = torch.frombuffer(bytearray(raw), dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8)
    tensor = flat.view(dtype).reshape(shape).clone()
    return tensor.requires_grad_(True) if value.get("requires_grad") and tensor.is_floating_point() else tensor


# ----------------------------------------------------------------------------------------------- frames
def send(sock: socket.socket, header: dict[str, Any], buffers: list[bytes]) -> None:
    """Write one frame: the JSON header (with the number of buffers) and the buffers."""
    head = json.dumps({**header, "buffers": len(buffers)}, allow_nan=False).encode()
    parts = [_LEN.pack(len(head)), head]
    for b in buffers:
        parts += [_LEN.pack(len(b)), b]
    sock.sendall(b"".join(parts))


def receive(
    sock: socket.socket, limit: int = MAX_FRAME_BYTES, deadline: float | None = None
) -> tuple[dict[str, Any], list[bytes]]:
    """Read one frame; raises EOFError when the peer closed, WireError when the frame is malformed.

    `deadline` (a `time.monotonic()` value): the whole frame must have arrived by then, else TimeoutError
    (a peer that sends one byte at a time cannot keep the reader waiting past it).
    """
    total = 0

    def chunk() -> bytes:
        nonlocal total
        (size,) = _LEN.unpack(_exactly(sock, _LEN.size, deadline))
        total += size
        if total > limit:
            raise WireError(f"a frame of more than {limit} bytes")
        return _exactly(sock, size, deadline)

    previous = sock.gettimeout()
    try:
        try:
            header = json.loads(chunk())
        except ValueError as e:
            raise WireError(f"the header is not JSON: {e}") from e
        count = header.get("buffers") if isinstance(header, dict) else None
        if not isinstance(count, int) or count < 0:
            raise WireError("the header does not say how many buffers follow")
        return header, [chunk() for _ in range(count)]
    finally:
        if deadline is not None:
            sock.settimeout(previous)


def _exactly(sock: socket.socket, size: int, deadline: float | None = None) -> bytes:
    data = bytearray()
    while len(data) < size:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"the frame did not arrive in time ({len(data)} of {size} bytes)")
            sock.settimeout(left)
        piece = sock.recv(min(size - len(data), 1 << 20))
        if not piece:
            raise EOFError("the peer closed the connection")
        data += piece
    return bytes(data)
