"""Progress of a run's steps, shown to a person: what ``progress=True`` and the CLI use.

The executors report progress as calls ``callback(step, done, total)``: a step's first
call comes as it starts (``done`` 0, or what an earlier run already did), then one per
batch or poll, and its last has ``done == total`` (the step's own count). ``total`` is
None while unknown. :class:`StepProgress` is such a callback that renders them:

- in a terminal, a live rich bar per step with its count, rate and time remaining;
- in a Jupyter notebook, the same table in one output of the cell, updated in place;
- otherwise (a pipe, a log file), a plain line per step at most every
  ``PLAIN_EVERY_SECONDS`` and one as each step ends, with rates measured from the
  step's start (none for steps under ``MIN_RATE_SECONDS`` or without items).

rich is imported only when a StepProgress is made: the async core imports this module
and uses it only when asked to (``progress=True``).
"""

from __future__ import annotations

import importlib
import io
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any

from redismigrate.report import MIN_RATE_SECONDS

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, ProgressColumn, TaskID

ProgressCallback = Callable[[str, int, int | None], None]
# a batch's per-index callback: (index name, position, of how many, status)
IndexCallback = Callable[[str, int, int, str], None]

STEP_LABELS = {
    "field_renames": "Rename fields",
    "backup": "Back up vectors",
    "key_renames": "Move keys",
    "reencode": "Re-encode vectors",
    "reconcile": "Reconcile app writes",
    "indexing": "Build the index",
    "restore": "Restore vectors",
    # online re-encoding (aio/reencode_online.py)
    "backfill": "Backfill shadow field",
    "sweep": "Sweep shadow field",
    "mirror": "Mirror app writes",
    "awaiting_cut_over": "Wait for cut-over (s)",
    "awaiting_new_encoding": "Wait for new-encoding writes (s)",
    "rewrite": "Rewrite originals in place",
    "unshadow": "Remove shadow fields",
}
PLAIN_EVERY_SECONDS = 5.0
NOTEBOOK_EVERY_SECONDS = 0.25
_NOTEBOOK_PRE = (
    '<pre style="white-space:pre;overflow-x:auto;line-height:normal;'
    "font-family:Menlo,'DejaVu Sans Mono',consolas,'Courier New',monospace\">{code}</pre>"
)


def clock(seconds: float) -> str:
    """``0:01:05`` for 65 seconds."""
    return str(timedelta(seconds=int(seconds)))


@dataclass
class _Step:
    """One step as the renderer knows it: counted from its first call."""

    label: str
    started: float
    base: int  # ``done`` at the first call: what earlier runs did is not this run's rate
    done: int
    total: int | None
    last_line: float
    finished: bool = False

    def rate(self, now: float) -> float | None:
        """Items a second since the step started; None when too short or nothing done."""
        elapsed = now - self.started
        items = self.done - self.base
        if items <= 0 or elapsed < MIN_RATE_SECONDS:
            return None
        return items / elapsed

    def remaining(self, now: float) -> float | None:
        rate = self.rate(now)
        if rate is None or self.total is None:
            return None
        return max(self.total - self.done, 0) / rate


class StepProgress:
    """A progress callback ``(step, done, total)`` that renders the steps on ``console``
    (a new rich Console on stdout when not given); use it as a context manager.

    ``index(name, position, total, status)`` is a batch's per-index callback: it prints
    the index's status and starts fresh bars for the next index.
    """

    def __init__(self, console: Console | None = None) -> None:
        from rich.console import Console

        self.console = console if console is not None else Console()
        self.notebook = self.console.is_jupyter
        self.live = self.console.is_terminal and not self.notebook
        self.lock = threading.RLock()
        self.steps: dict[str, _Step] = {}
        self.tasks: dict[str, TaskID] = {}
        self.progress: Progress | None = None
        self._display: Any = None  # the notebook output updated in place
        self._shown_at = 0.0
        if self.live or self.notebook:
            from rich.progress import BarColumn, Progress, TextColumn

            self.progress = Progress(
                TextColumn("{task.description:<20}"),
                BarColumn(),
                TextColumn("{task.fields[count]}", style="progress.download"),
                TextColumn("{task.fields[rate]}", style="progress.data.speed"),
                _time_column(),
                console=self.console,
                disable=not self.live,  # a notebook gets the table, not a live display
            )

    def __enter__(self) -> StepProgress:
        if self.progress is not None and self.live:
            self.progress.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.progress is not None and self.live:
            self.progress.stop()
        if self.notebook:
            self._show_in_notebook(force=True)

    # ------------------------------------------------------------------ callbacks
    def __call__(self, step: str, done: int, total: int | None) -> None:
        with self.lock:
            now = time.monotonic()
            state = self.steps.get(step)
            if state is not None and state.finished:
                if (done, total) == (state.done, state.total):
                    return  # the step's end, reported again
                state = None  # the step runs again (a rebuild, the next index): afresh
            fresh = state is None
            if state is None:
                label = STEP_LABELS.get(step, step.replace("_", " ").capitalize())
                state = _Step(label, now, done, done, total, last_line=now)
                self.steps[step] = state
            state.done, state.total = done, total
            state.finished = total is not None and done >= total
            if self.progress is not None:
                self._update_bar(step, state, now, fresh=fresh)
            else:
                self._plain_line(state, now)

    def index(self, name: str, position: int, total: int, status: str) -> None:
        """A batch's per-index callback (an IndexCallback): a line per index and status."""
        with self.lock:
            if status == "in_progress":
                self.steps.clear()
                if self.progress is not None:
                    for task in self.tasks.values():
                        self.progress.remove_task(task)
                    self.tasks.clear()
            self.console.print(
                f"[{position}/{total}] {name}: {status}", markup=False, highlight=False
            )

    # ------------------------------------------------------------------ rendering
    def _update_bar(self, step: str, state: _Step, now: float, *, fresh: bool) -> None:
        assert self.progress is not None
        rate = state.rate(now)
        rate_text = f"{rate:,.0f}/s" if rate is not None else ""
        count = f"{state.done:,}/{state.total:,}" if state.total else f"{state.done:,}"
        # rich's bar: no total is "unknown", and a step with nothing to do is complete
        total = max(state.total or 0, state.done) or (1 if state.finished else None)
        completed = total if state.finished else state.done
        task = self.tasks.get(step)
        if task is None or fresh:
            if task is not None:
                self.progress.remove_task(task)
            task = self.tasks[step] = self.progress.add_task(
                state.label, total=total, rate=rate_text, count=count
            )
        self.progress.update(task, completed=completed, total=total, rate=rate_text, count=count)
        if self.notebook:
            self._show_in_notebook(force=state.finished)

    def _plain_line(self, state: _Step, now: float) -> None:
        of = f"/{state.total:,}" if state.total else ""
        rate = state.rate(now)
        if state.finished:
            took = now - state.started
            line = f"{state.label}: {state.done:,}{of} in {took:,.1f} s"
            if rate is not None:
                line += f" ({rate:,.0f}/s)"
        elif now - state.last_line >= PLAIN_EVERY_SECONDS and rate is not None:
            line = f"{state.label}: {state.done:,}{of} ({rate:,.0f}/s"
            remaining = state.remaining(now)
            line += f", {clock(remaining)} left)" if remaining is not None else ")"
        else:
            return
        state.last_line = now
        self.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def _show_in_notebook(self, *, force: bool = False) -> None:
        """The bars as one output of the running cell, replaced as they move."""
        if self.progress is None or not self.progress.tasks:
            return
        now = time.monotonic()
        if not force and now - self._shown_at < NOTEBOOK_EVERY_SECONDS:
            return
        self._shown_at = now
        from rich.console import Console

        # IPython is there when rich sees a notebook; imported by name: it is untyped
        display = importlib.import_module("IPython.display").display

        recorder = Console(
            file=io.StringIO(), record=True, width=110, force_terminal=False, force_jupyter=False
        )
        recorder.print(self.progress.make_tasks_table(self.progress.tasks))
        bundle = {
            "text/plain": recorder.export_text(clear=False),
            "text/html": recorder.export_html(inline_styles=True, code_format=_NOTEBOOK_PRE),
        }
        if self._display is None:
            self._display = display(bundle, raw=True, display_id=True)
        else:
            self._display.update(bundle, raw=True)


def _time_column() -> ProgressColumn:
    """``ETA 0:00:12`` while a step runs, ``took 0:00:40`` once it ended."""
    from rich.progress import Task, TimeRemainingColumn
    from rich.text import Text

    class TimeColumn(TimeRemainingColumn):
        def render(self, task: Task) -> Text:
            if task.finished:
                return Text(f"took {clock(task.finished_time or 0)}", style="progress.elapsed")
            if task.total is None:
                return Text("")
            return Text("ETA ") + super().render(task)

    return TimeColumn()


class Reporting:
    """What :func:`shown` gives a run: the callbacks to report to, each rendered too when
    asked (``show``), until the ``with`` (or ``async with``) block ends."""

    def __init__(
        self,
        show: bool,
        steps: ProgressCallback | None,
        indexes: IndexCallback | None = None,
    ) -> None:
        self.show = show
        self.steps = steps
        self.indexes = indexes
        self.renderer: StepProgress | None = None

    def __enter__(self) -> Reporting:
        if not self.show:
            return self
        renderer = self.renderer = StepProgress().__enter__()
        steps, indexes = self.steps, self.indexes

        def both_steps(step: str, done: int, total: int | None) -> None:
            renderer(step, done, total)
            if steps is not None:
                steps(step, done, total)

        def both_indexes(name: str, position: int, total: int, status: str) -> None:
            renderer.index(name, position, total, status)
            if indexes is not None:
                indexes(name, position, total, status)

        self.steps, self.indexes = both_steps, both_indexes
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.renderer is not None:
            self.renderer.__exit__(kind, value, traceback)
            self.renderer = None

    async def __aenter__(self) -> Reporting:
        return self.__enter__()

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.__exit__(kind, value, traceback)


def shown(
    show: bool, steps: ProgressCallback | None, indexes: IndexCallback | None = None
) -> Reporting:
    """``async with shown(progress, progress_callback) as reporting:`` a run reports to
    ``reporting.steps`` (and a batch its indexes to ``reporting.indexes``): the callbacks
    as given when ``show`` is False, else ones that also render (:class:`StepProgress`)."""
    return Reporting(show, steps, indexes)
