"""Progress for long steps: a rich bar per step on a terminal, plain lines otherwise."""

from __future__ import annotations

import threading
import time
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

STEP_LABELS = {
    "field_renames": "Rename fields",
    "backup": "Back up vectors",
    "key_renames": "Move keys",
    "reencode": "Re-encode vectors",
    "indexing": "Build the index",
}
PLAIN_EVERY_SECONDS = 2.0


class StepProgress:
    """A progress callback ``(step, done, total)`` that renders on ``console``."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.live = console.is_terminal
        self.lock = threading.Lock()
        self.tasks: dict[str, TaskID] = {}
        self.last_plain: dict[str, float] = {}
        self.started: dict[str, float] = {}
        self.progress = Progress(
            TextColumn("{task.description:<18}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            console=console,
            disable=not self.live,
        )

    def __enter__(self) -> StepProgress:
        self.progress.__enter__()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.progress.__exit__(kind, value, traceback)

    def __call__(self, step: str, done: int, total: int | None) -> None:
        with self.lock:
            now = time.monotonic()
            start = self.started.setdefault(step, now)
            rate = done / (now - start) if now > start else 0.0
            rate_text = f"{rate:,.0f}/s"
            label = STEP_LABELS.get(step, step)
            if self.live:
                if step not in self.tasks:
                    self.tasks[step] = self.progress.add_task(label, total=total, rate="")
                shown_total = max(total or 0, done) or None
                self.progress.update(
                    self.tasks[step], completed=done, total=shown_total, rate=rate_text
                )
                return
            last = self.last_plain.get(step)
            finished = total is not None and done >= total
            if last is None or finished or now - last >= PLAIN_EVERY_SECONDS:
                self.last_plain[step] = now
                of = f"/{total:,}" if total else ""
                self.console.print(f"{label}: {done:,}{of} ({rate_text})", highlight=False)
