"""Progress for long steps: the renderer behind ``progress=True`` (redismigrate/progress.py),
on the CLI's console."""

from __future__ import annotations

from redismigrate.progress import PLAIN_EVERY_SECONDS, STEP_LABELS, StepProgress

__all__ = ["PLAIN_EVERY_SECONDS", "STEP_LABELS", "StepProgress"]
