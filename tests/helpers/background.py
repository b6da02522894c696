"""Scenarios that run beside the rest of the suite.

Most tests keep one of the 2 cores busy; a Ray scenario with a cluster of its own (PBT, multi-node) runs in a
thread from the session's start on the other, and the fixture of its tests waits for its result. A test module
registers its scenario with `@scenario`; conftest's session fixture starts those whose tests are selected and,
at the end, asks them to stop (`stop` is set) and waits for them, so no cluster outlives the session.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

Scenario = Callable[[pytest.TempPathFactory, threading.Event], Any]
REGISTERED: dict[str, Scenario] = {}


def scenario(fn: Scenario) -> Scenario:
    """Register `fn(tmp_path_factory, stop)` as the background scenario of the test module defining it."""
    REGISTERED[Path(fn.__code__.co_filename).name] = fn
    return fn


class Running:
    """A registered scenario running in a daemon thread: its return value or the exception it raised."""

    def __init__(self, fn: Scenario, tmp: pytest.TempPathFactory, stop: threading.Event) -> None:
        self.box: dict[str, Any] = {}
        self.thread = threading.Thread(target=self._run, args=(fn, tmp, stop), daemon=True, name=fn.__name__)
        self.thread.start()

    def _run(self, fn: Scenario, tmp: pytest.TempPathFactory, stop: threading.Event) -> None:
        try:
            self.box["result"] = fn(tmp, stop)
        except BaseException as exc:  # pytest.fail raises a BaseException: re-raised in the waiting fixture
            self.box["error"] = exc

    def result(self) -> Any:
        """Wait for the scenario; its result, or its exception raised here."""
        self.thread.join()
        if "error" in self.box:
            raise self.box["error"]
        return self.box["result"]
