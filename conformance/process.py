"""The subprocess both op conformance (:mod:`.worker`) and model conformance
(:mod:`.model`) run a backend in: spawning it with a job, its environment
re-exec, and the JSON-lines protocol of events between the two sides.

The parent writes the job to a file and starts ``python -m MODULE JOB.json``
in its own session (so a kill takes every process the backend started). The
child takes the original stdout for the protocol (:func:`protocol_stream`:
anything the backend prints goes to stderr and cannot corrupt the stream),
re-executes itself once when the backend's ``ENV`` is not yet set
(:func:`apply_env`), then writes one JSON object per line
(:func:`emit`): ``ready``, ``start``, ``result`` (with ``rows``), ``done``.
The parent reads them with :meth:`Worker.next`, which raises
:class:`queue.Empty` when nothing comes within a timeout; end of stream
without ``done`` means the child died (:meth:`Worker.died` says how).
"""
from __future__ import annotations

import json
import logging
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping
from typing import IO, Any

log = logging.getLogger(__name__)

#: set in the environment of a child that re-executed itself with its backend's ENV applied
ENV_MARK = "DSPORT_WORKER_ENV_APPLIED"


# -- the child's side ------------------------------------------------------------------------
def protocol_stream() -> IO[str]:
    """The original stdout, for protocol lines only; file descriptor 1 now points at stderr."""
    proto = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    return proto


def emit(stream: IO[str], **event: Any) -> None:
    stream.write(json.dumps(event, default=str) + "\n")
    stream.flush()


def apply_env(env: Mapping[str, str], module: str, argv: list[str], proto: IO[str]) -> None:
    """Re-execute ``python -m module *argv`` with ``env`` set, once, when it is not set
    already: a backend's ``ENV`` must be in place before the backend is imported again.
    The protocol stream goes back to file descriptor 1 for the new process."""
    if not env or all(os.environ.get(k) == v for k, v in env.items()) or os.environ.get(ENV_MARK):
        return
    proto.flush()
    os.dup2(proto.fileno(), 1)
    os.execve(sys.executable, [sys.executable, "-m", module, *argv], {**os.environ, **env, ENV_MARK: "1"})


# -- the parent's side -----------------------------------------------------------------------
def child_env() -> dict[str, str]:
    """The child must import what this process imports (dsport itself, test backends)."""
    paths = [p for p in sys.path if p and os.path.isdir(p)]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(dict.fromkeys(paths)), "PYTHONUNBUFFERED": "1"}


class Worker:
    """``python -m module JOB.json`` running ``job``; a context manager that kills it on exit."""

    def __init__(self, module: str, job: Mapping[str, Any]):
        self.jobfile = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
        json.dump(job, self.jobfile)
        self.jobfile.close()
        self.errfile = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen([sys.executable, "-m", module, self.jobfile.name], stdout=subprocess.PIPE,
                                     stderr=self.errfile, text=True, env=child_env(), start_new_session=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def next(self, timeout: float) -> dict[str, Any] | None:
        """The next event; None at end of stream; raises queue.Empty on timeout."""
        while True:
            line = self.lines.get(timeout=timeout)
            if line is None:
                return None
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                log.warning("worker wrote a non-protocol line: %r", line[:200])

    def died(self) -> str:
        """How the child ended, with the tail of its stderr."""
        rc = self.proc.wait(timeout=10)
        how = f"killed by {signal.Signals(-rc).name}" if rc < 0 else f"exited with code {rc}"
        tail = self.stderr_tail()
        return f"worker {how}" + (f"; stderr: {tail}" if tail else "")

    def stderr_tail(self, n: int = 600) -> str:
        self.errfile.seek(0)
        return " ".join(self.errfile.read()[-n:].split())

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()

    def close(self) -> None:
        self.kill()
        self.errfile.close()
        os.unlink(self.jobfile.name)
