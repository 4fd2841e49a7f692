"""One progress bar for a whole job, in bytes of input, with a file count
for directories. Every phase of the job moves it (reading, coding, the
final copy and fsync), and it closes only when the job is done."""
from __future__ import annotations


class Progress:
    """``advance(nbytes)`` as input bytes are handled; ``file_done()`` after
    each file of a directory job. Disabled, it costs nothing and prints
    nothing."""

    def __init__(self, total: int, desc: str, enabled: bool, files: int | None = None):
        self._files = files
        self._done_files = 0
        self._bar = None
        if enabled:
            from tqdm import tqdm
            self._bar = tqdm(total=total, desc=desc, unit="B", unit_scale=True,
                             unit_divisor=1000, leave=False, dynamic_ncols=True)
            self._show_files()

    def advance(self, nbytes: int) -> None:
        if self._bar is not None and nbytes:
            self._bar.update(nbytes)

    def file_done(self) -> None:
        self._done_files += 1
        self._show_files()

    def _show_files(self) -> None:
        if self._bar is not None and self._files is not None:
            self._bar.set_postfix_str(f"{self._done_files}/{self._files} files", refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


NO_PROGRESS = Progress(0, "", enabled=False)
