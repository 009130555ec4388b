"""Guards the stored snapshots and fixtures against drift: each is rebuilt by the oracle and compared."""

from __future__ import annotations

import numpy as np
import pytest

from oracle.make_snapshots import FIXTURE_DIR, SNAPSHOT_DIR, fixture_builders, snapshot_builders
from tests.snapshot_io import read_npz

_SNAPSHOTS = snapshot_builders()
_FIXTURES = fixture_builders()


@pytest.mark.parametrize("name", sorted(_SNAPSHOTS), ids=str)
def test_snapshot_drift(name: str) -> None:
    path = SNAPSHOT_DIR / f"{name}.npz"
    assert path.exists(), f"{path} is missing: run `make snapshots`"
    stored = read_npz(path)
    fresh = {key: np.asarray(value) for key, value in _SNAPSHOTS[name]().items()}
    assert sorted(stored) == sorted(fresh), f"{name}: stored arrays {sorted(stored)} != rebuilt {sorted(fresh)}"
    for key in fresh:
        assert stored[key].shape == fresh[key].shape, f"{name}/{key}: shape {stored[key].shape} != {fresh[key].shape}"
        assert stored[key].dtype == fresh[key].dtype, f"{name}/{key}: dtype {stored[key].dtype} != {fresh[key].dtype}"
        if np.issubdtype(fresh[key].dtype, np.floating):
            # Rebuilt on another CPU, float32 kernels may differ in the last bits; anything more is drift.
            np.testing.assert_allclose(stored[key], fresh[key], rtol=1e-5, atol=1e-6, err_msg=f"{name}/{key}")
        else:
            np.testing.assert_array_equal(stored[key], fresh[key], err_msg=f"{name}/{key}")


@pytest.mark.parametrize("name", sorted(_FIXTURES), ids=str)
def test_fixture_drift(name: str) -> None:
    path = FIXTURE_DIR / name
    assert path.exists(), f"{path} is missing: run `make snapshots`"
    assert path.read_bytes() == _FIXTURES[name](), f"{path} differs from what `make snapshots` writes"
