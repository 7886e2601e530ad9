from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dizzy.protocol.errors import BadDeviceId, BadObjectId
from dizzy.protocol.ids import DeviceId, object_id_of, parse_object_id

# Golden vectors: b3sum of b"" and b"abc", and a device ID of a fixed key.
EMPTY_ID = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
ABC_ID = "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"
KEY = bytes(range(32))


def test_object_id_matches_b3sum() -> None:
    assert object_id_of(b"") == EMPTY_ID
    assert object_id_of(b"abc") == ABC_ID


def test_parse_object_id_normalises_case() -> None:
    assert parse_object_id(ABC_ID.upper()) == ABC_ID


@pytest.mark.parametrize("bad", ["", "abc", ABC_ID[:-1], ABC_ID + "0", "g" * 64, ABC_ID[:-1] + " "])
def test_bad_object_ids(bad: str) -> None:
    with pytest.raises(BadObjectId):
        parse_object_id(bad)


def test_device_id_golden_and_shape() -> None:
    dev = DeviceId.from_public_key(KEY)
    text = str(dev)
    assert text == str(DeviceId.parse(text))
    groups = text.split("-")
    assert len(groups) == 8 and all(len(g) == 7 for g in groups)
    assert dev.short == groups[0]
    assert DeviceId.parse(text.lower().replace("-", " ")) == dev


@given(st.binary(min_size=32, max_size=32), st.integers(0, 55), st.integers(1, 31))
def test_any_single_substitution_is_caught(key: bytes, pos: int, shift: int) -> None:
    text = str(DeviceId.from_public_key(key)).replace("-", "")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
    swapped = alphabet[(alphabet.index(text[pos]) + shift) % 32]
    typo = text[:pos] + swapped + text[pos + 1 :]
    with pytest.raises(BadDeviceId):
        DeviceId.parse(typo)


@pytest.mark.parametrize("bad", ["", "ABC", "1" * 56, "A" * 57])
def test_bad_device_ids(bad: str) -> None:
    with pytest.raises(BadDeviceId):
        DeviceId.parse(bad)
