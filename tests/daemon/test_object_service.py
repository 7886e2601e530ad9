"""Reading objects for peers (daemon/object_service.py) when the file went away."""

from __future__ import annotations

from pathlib import Path

import pytest

from dizzy.daemon.object_service import _pread, _read_small
from dizzy.protocol.errors import NotFound


def test_a_shared_file_gone_since_it_was_located_is_not_found(tmp_path: Path) -> None:
    """Found by the soak: a file renamed between locating it and reading it made
    obj.small fail with a logged traceback and an "internal" error to the peer."""
    gone = tmp_path / "renamed-meanwhile.txt"
    with pytest.raises(NotFound):
        _read_small(gone)
    with pytest.raises(NotFound):
        _pread(gone, 0, 10)
    gone.write_bytes(b"here again")
    assert _read_small(gone) == b"here again"
