"""Stopping a run at a step boundary when asked to: Ctrl-C (SIGINT) or SIGTERM, which SLURM, Kubernetes, systemd and
``timeout`` send some seconds before they kill a job."""
from __future__ import annotations

import signal
import sys
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequested(KeyboardInterrupt):
    """The run stopped because of ``signum``; a command line exits with 128 + signum, as shells expect."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _SignalHandler:
    """While inside: ``self._handle`` answers SIGINT and SIGTERM; on leaving, the previous handlers come back.
    Handlers can only be installed from the main thread; elsewhere (a job started in a thread) the signals keep
    their previous meaning."""

    def __enter__(self):
        self.previous = {}
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def _handle(self, signum, frame) -> None:
        raise NotImplementedError

    def __exit__(self, *exc) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)


class GracefulStop(_SignalHandler):
    """The first SIGINT or SIGTERM asks the loop to finish its step, save ``latest.pt`` and stop (``requested`` is
    then the signal's name); a second one stops at once, and ``latest.pt`` holds the last checkpoint written."""

    def __init__(self, announce: bool = True):
        self.announce = announce  # say what happens next (only one of several processes does)

    def __enter__(self) -> "GracefulStop":
        self.requested: str | None = None
        self.signum = signal.SIGINT
        return super().__enter__()

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise StopRequested(signum)
        self.requested, self.signum = signal.Signals(signum).name, signum
        if self.announce:
            print(f"\n{self.requested}: finishing this step and saving latest.pt (send it again to stop at once)",
                  file=sys.stderr)


class StopOnSignal(_SignalHandler):
    """SIGINT and SIGTERM raise StopRequested at once, for a job with nothing to finish but its clean-up (the demo's
    server: Gradio's own wait swallows Ctrl-C and exits 0; SIGTERM's default kills at once, skipping the clean-up,
    and a container's PID 1 ignores it)."""

    def _handle(self, signum, frame) -> None:
        raise StopRequested(signum)
