"""Byte-for-byte reproducible `.npz` files.

`np.savez` stamps every member with the current time, so regenerating identical arrays would still change
the file. Here members are written in sorted order with a fixed timestamp and no compression.
"""

from __future__ import annotations

import io
import os
import zipfile

import numpy as np

from cs336_common.atomic import atomic_open

_EPOCH = (1980, 1, 1, 0, 0, 0)


def write_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    """Write `arrays` to `path` deterministically (atomic: temporary file, then rename)."""
    with atomic_open(path, "wb") as f, zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED) as zf:
        for name in sorted(arrays):
            array = np.asarray(arrays[name])
            if array.dtype == object:
                raise TypeError(f"snapshot array {name!r} has dtype object; store numbers or bytes only")
            buffer = io.BytesIO()
            # NOTE: not np.ascontiguousarray, which turns 0-d arrays into shape (1,).
            np.lib.format.write_array(buffer, np.array(array, order="C", copy=True), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_EPOCH)
            info.external_attr = 0o644 << 16
            zf.writestr(info, buffer.getvalue())


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Load every array of an `.npz` file into memory."""
    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}
