"""Progress bars on rank 0 (tqdm), for in-process runs and for stage processes we watch."""
from __future__ import annotations

import contextlib
import threading
from pathlib import Path


class _NoBar:
    def update(self, n: int) -> None:
        pass


@contextlib.contextmanager
def progress_bar(total: int, enabled: bool, desc: str):
    if not enabled:
        yield _NoBar()
        return
    from tqdm import tqdm
    with tqdm(total=total, desc=desc, unit="req", dynamic_ncols=True, leave=False) as bar:
        yield bar


@contextlib.contextmanager
def watch_partial(path: Path, total: int, enabled: bool, desc: str):
    """Follow the finished-requests file rank 0 appends to, from the launching process."""
    stop = threading.Event()

    def follow(bar):
        seen = 0
        while not stop.wait(0.5):
            try:
                n = sum(1 for _ in open(path))
            except OSError:
                continue
            if n > seen:
                bar.update(n - seen)
                seen = n

    with progress_bar(total, enabled, desc) as bar:
        thread = threading.Thread(target=follow, args=(bar,), daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
