"""A process that writes to a SQLite store until it is killed.

``python sqlite_writer.py PATH WRITER_ID`` alternates single ``set`` calls and
``set_many`` batches of ``BATCH`` entries, and after each call *returns* prints one
line, flushed, so that the test knows exactly which writes were acknowledged:

    ack set W:s{i}
    ack batch W:b{i} {BATCH}

Values are ``{"w": W, "i": i, "j": j, "pad": "x" * 200}`` (``j`` = 0 for singles).
"""

from __future__ import annotations

import asyncio
import sys

from taskiq_flow.storage import SQLiteStorageAdapter

BATCH = 100


def value(writer: str, i: int, j: int = 0) -> dict[str, object]:
    """The value stored for write ``i`` (entry ``j`` of a batch)."""
    return {"w": writer, "i": i, "j": j, "pad": "x" * 200}


async def main(path: str, writer: str) -> None:
    """Write forever (the test kills this process)."""
    async with SQLiteStorageAdapter(path) as storage:
        i = 0
        while True:
            await storage.set(f"{writer}:s{i}", value(writer, i))
            sys.stdout.write(f"ack set {writer}:s{i}\n")
            sys.stdout.flush()
            batch = {f"{writer}:b{i}:{j}": value(writer, i, j) for j in range(BATCH)}
            await storage.set_many(batch)
            sys.stdout.write(f"ack batch {writer}:b{i} {BATCH}\n")
            sys.stdout.flush()
            i += 1


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
