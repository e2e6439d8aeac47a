"""write_file / read_file / list_dir, done with the agent's permissions."""

from __future__ import annotations

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
