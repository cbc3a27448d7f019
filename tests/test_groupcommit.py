"""The group committer under the queue: what waits while a batch flushes goes in the next
batch, behind one fsync of the folder that follows every rename in it (promise 1)."""

from __future__ import annotations

import asyncio
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from relay import groupcommit


def test_commits_that_wait_behind_a_flush_share_the_next_folder_fsync(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "active"
    folder.mkdir()
    committer = groupcommit.GroupCommitter(str(folder), threads=1)
    calls: list[str] = []
    release = threading.Event()
    real_fsync = os.fsync

    def fsync(fd: int) -> None:  # the folder's fsync comes through here too
        if not calls:  # the first file: hold its thread while the others queue up
            release.wait(5)
        calls.append("fsync folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        real_fsync(fd)

    monkeypatch.setattr(groupcommit.os, "fsync", fsync)

    def job(name: str) -> tuple[Callable[[], int], Callable[[], None]]:
        src = tmp_path / f"{name}.tmp"
        holder: list[int] = []

        def write() -> int:
            holder.append(os.open(src, os.O_WRONLY | os.O_CREAT | os.O_EXCL))
            os.write(holder[0], name.encode())
            return holder[0]

        def then() -> None:
            os.close(holder[0])
            os.rename(src, folder / name)
            calls.append(f"rename {name}")
        return write, then

    async def main() -> list[str]:
        first = committer.commit(*job("m0"))
        await asyncio.sleep(0.1)  # the thread holds m0 in its fsync
        rest = [committer.commit(*job(f"m{i}")) for i in range(1, 6)]
        release.set()
        await asyncio.gather(first, *rest)
        return sorted(p.name for p in folder.iterdir())

    try:
        assert asyncio.run(main()) == [f"m{i}" for i in range(6)]
    finally:
        committer.close()
    assert calls == ["fsync file", "rename m0", "fsync folder",
                     *[c for i in range(1, 6) for c in ("fsync file", f"rename m{i}")],
                     "fsync folder"]


def test_a_failed_file_fails_only_its_own_commit(tmp_path: Path) -> None:
    folder = tmp_path / "active"
    folder.mkdir()
    committer = groupcommit.GroupCommitter(str(folder), threads=1)
    renamed: list[str] = []

    def broken() -> int:
        raise OSError(28, "No space left on device")

    fds: list[int] = []

    def good() -> int:
        fds.append(os.open(folder, os.O_RDONLY | os.O_DIRECTORY))
        return fds[-1]

    def then() -> None:
        os.close(fds[0])
        renamed.append("good")

    async def main() -> list[object]:
        return await asyncio.gather(
            committer.commit(broken, lambda: renamed.append("broken")),
            committer.commit(good, then),
            return_exceptions=True)

    try:
        outcomes = asyncio.run(main())
    finally:
        committer.close()
    assert isinstance(outcomes[0], OSError) and outcomes[0].errno == 28
    assert outcomes[1] is None
    assert renamed == ["good"]


def test_close_finishes_what_is_queued(tmp_path: Path) -> None:
    committer = groupcommit.GroupCommitter(str(tmp_path), threads=2)
    done: list[int] = []

    async def main() -> None:
        fds: dict[int, int] = {}

        def opener(i: int) -> Callable[[], int]:
            def write() -> int:
                fds[i] = os.open(tmp_path, os.O_RDONLY)
                return fds[i]
            return write

        def closer(i: int) -> Callable[[], None]:
            def then() -> None:
                os.close(fds[i])
                done.append(i)
            return then
        futures = [committer.commit(opener(i), closer(i)) for i in range(20)]
        await asyncio.gather(*futures)

    asyncio.run(main())
    committer.close()
    assert sorted(done) == list(range(20))
