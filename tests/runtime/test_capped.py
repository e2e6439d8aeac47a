"""The output cap keeps the head and the tail and counts every byte, whatever the chunking."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gymbox.runtime.supervisor import Capped


@settings(deadline=None)  # the machine is shared: time is not the property
@given(chunks=st.lists(st.binary(max_size=300), max_size=30), cap=st.integers(1, 500))
def test_head_and_tail_survive_any_chunking(chunks, cap):
    capped = Capped(cap)
    for chunk in chunks:
        capped.feed(chunk)
    data = b"".join(chunks)
    assert capped.total == len(data)
    assert len(capped.head) + len(capped.tail) <= cap
    assert capped.truncated == (len(data) > cap)
    if capped.truncated:
        assert data.startswith(bytes(capped.head)) and data.endswith(bytes(capped.tail))
        assert f"[... {len(data) - len(capped.head) - len(capped.tail)} bytes omitted" in (
            capped.text())
    else:
        assert capped.text() == data.decode("utf-8", "replace")
