"""write_file / read_file / list_dir, done with the agent's permissions."""

from __future__ import annotations

import asyncio
import errno

import pytest

from gymbox.runtime import DirEntry, InvalidRequest


async def test_round_trip_of_binary_data_in_nested_folders(sandbox):
    data = bytes(range(256)) * 1000
    await sandbox.write_file("deep/er/blob.bin", data)
    assert await sandbox.read_file("deep/er/blob.bin") == data
    assert await sandbox.read_file(f"{sandbox.workdir}/deep/er/blob.bin") == data
    await sandbox.write_file("run.sh", "#!/bin/sh\necho ran\n", mode=0o755)
    assert (await sandbox.exec("./run.sh", timeout=10)).stdout == "ran\n"


async def test_list_dir(sandbox):
    await sandbox.write_file("d/a.txt", "abc")
    await sandbox.exec("mkdir d/sub && ln -s a.txt d/link", timeout=10)
    assert await sandbox.list_dir("d") == [
        DirEntry("a.txt", "file", 3), DirEntry("link", "symlink", 5),
        DirEntry("sub", "dir", (await sandbox.list_dir("d"))[2].size),
    ]


async def test_missing_file_raises_file_not_found(sandbox):
    with pytest.raises(FileNotFoundError):
        await sandbox.read_file("nope.txt")
    with pytest.raises(FileNotFoundError):
        await sandbox.list_dir("no-dir")


async def test_agent_permissions_apply(sandbox):
    with pytest.raises(PermissionError):
        await sandbox.read_file("/etc/shadow")
    with pytest.raises(OSError) as caught:
        await sandbox.write_file("/etc/evil", "x")
    assert caught.value.errno in (errno.EACCES, errno.EROFS)


async def test_read_limit(sandbox):
    await sandbox.exec(f"head -c {sandbox.spec.read_limit_bytes + 1} /dev/zero > big", timeout=30)
    with pytest.raises(OSError) as caught:
        await sandbox.read_file("big")
    assert caught.value.errno == errno.EFBIG


async def test_bad_paths_are_rejected(sandbox):
    for path in ("", "a\0b"):
        with pytest.raises(InvalidRequest):
            await sandbox.read_file(path)
    with pytest.raises(InvalidRequest):
        await sandbox.write_file("x", 42)


async def test_file_operations_survive_concurrent_commands_and_their_sweeps(sandbox):
    await sandbox.write_file("f.txt", "content")
    calls = [sandbox.read_file("f.txt") for _ in range(15)]
    calls += [sandbox.exec("true", timeout=10) for _ in range(15)]
    results = await asyncio.gather(*calls)
    assert results[:15] == [b"content"] * 15
    assert all(r.ok for r in results[15:])
