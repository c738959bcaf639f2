"""Starting a new file's disk writes early, so that the fsync before it is published is short.

Every output is fsynced before it is renamed into place (`surgery.io.atomic`). Left to the
kernel, a few hundred MB of new data sit in the page cache until that fsync, which then waits
for all of it; `Writeback` has the disk write them while the program reads the next tensors.
"""

from __future__ import annotations

import os
import threading

__all__ = ["Writeback"]

_FLUSH = 64 * 1024 * 1024  # bytes written between two writeback starts


class Writeback:
    """Starts writing a file's new data to disk while the program goes on: a thread runs
    fdatasync each time another `_FLUSH` bytes were written, so that the fsync before the file
    is published (`atomic_path`, `atomic_set`) finds little left. A head start only: that
    fsync is still what makes the file durable.

    Example:
    ```python
    with open(tmp, "wb") as f:
        writeback = Writeback(f.fileno())
        try:
            for chunk in chunks:
                f.write(chunk)
                writeback.wrote(len(chunk))
        finally:
            writeback.close()
    ```
    """

    def __init__(self, fd: int):
        self._fd, self._pending, self._stop = fd, 0, False
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="surgery-writeback",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        sync = getattr(os, "fdatasync", os.fsync)
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._stop:
                return
            try:
                sync(self._fd)
            except OSError:  # the final fsync reports what matters
                return

    def wrote(self, nbytes: int) -> None:
        """Counts bytes just written; starts a writeback past `_FLUSH` of them."""
        self._pending += nbytes
        if self._pending >= _FLUSH:
            self.start()

    def start(self) -> None:
        """Starts a writeback now of what was written since the last one, if anything (the
        file will not be written to for a while: a shard is done, the next one begins)."""
        if self._pending:
            self._pending = 0
            self._wake.set()

    def close(self) -> None:
        """Stops the thread (before the file is closed)."""
        self._stop = True
        self._wake.set()
        self._thread.join()
