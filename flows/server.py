"""Prefect's temporary API server, started early so that its start-up runs beside the command's own.

A flow run needs a Prefect API. With none configured (no `PREFECT_API_URL`), Prefect 3 starts a temporary
("ephemeral") server when the flow first calls the API: it imports the server application into the calling
process (5 s on the 2-core development VM) and then waits for a uvicorn subprocess to answer (9 s more),
while the command does nothing else. `digits generate` instead starts that same subprocess before its own
imports, checks and model loading, and points the flow at it once it answers: the two start-ups run side by
side on two cores, and the command's process never imports the server application (benchmarks/RESULTS.md,
"the engine against its sampler's ceiling").

The subprocess is the one Prefect runs itself (`prefect.server.api.server.SubprocessASGIServer`, Prefect 3):
uvicorn serving `prefect.server.api.server:create_app` on 127.0.0.1 with the UI off and the ephemeral flags
set, in the command's environment plus the current Prefect settings. Where an API is configured, or Prefect's
ephemeral mode is off, nothing is started and Prefect behaves as it always does. On Linux the server also
ends when the command is killed outright (SIGKILL runs none of the cleanup below): it watches its parent.

    with temporary_api() as api:      # the subprocess starts now (or nothing, with an API configured)
        ...                           # imports, params, prepare_run: the server comes up meanwhile
        with api.ready():             # waits for /health, then PREFECT_API_URL names it
            flow(...)
                                      # leaving: the server is stopped (SIGTERM, then SIGKILL after 5 s)
"""

from __future__ import annotations

import contextlib
import inspect
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

UVICORN_PORT_IN_USE = 3  # uvicorn's exit status when it cannot bind its port (Prefect retries on it too)
STOP_SECONDS = 5.0
# On Linux the server asks the kernel for SIGTERM when the thread that started it dies (prctl
# PR_SET_PDEATHSIG), so a command killed with SIGKILL, which runs no cleanup, leaves no server behind.
# The parent's pid comes as the first argument: a parent gone before the prctl call is seen, not missed.
WATCH_PARENT = (
    "import ctypes, os, runpy, signal, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)\n"
    "if os.getppid() != int(sys.argv.pop(1)):\n"
    "    sys.exit(0)\n"
    "runpy.run_module('uvicorn', run_name='__main__', alter_sys=True)\n"
)


class TemporaryApi:
    """A Prefect API server subprocess on a free loopback port; `None` process: the configured API is used."""

    def __init__(self, start: bool) -> None:
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        if start:
            self._spawn()

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def _spawn(self) -> None:
        from prefect import __module_path__ as prefect_path
        from prefect.settings import get_current_settings

        with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
            sock.bind(("127.0.0.1", 0))  # a free port, chosen by the kernel
            self.port = sock.getsockname()[1]
        # `python -m uvicorn`, watching its parent where the OS can (Linux)
        run = ["-c", WATCH_PARENT, str(os.getpid())] if sys.platform == "linux" else ["-m", "uvicorn"]
        self.process = subprocess.Popen(  # the command and environment of Prefect's SubprocessASGIServer
            [
                sys.executable,
                *run,
                "--app-dir",
                str(Path(prefect_path).parent),
                "--factory",
                "prefect.server.api.server:create_app",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--log-level",
                "error",
                "--lifespan",
                "on",
            ],  # fmt: skip
            env={
                **os.environ,
                "PREFECT_UI_ENABLED": "0",
                "PREFECT__SERVER_EPHEMERAL": "1",
                "PREFECT__SERVER_FINAL": "1",
                **get_current_settings().to_environment_variables(exclude_unset=True),
            },
            start_new_session=True,  # Ctrl-C reaches the command, which drains its logs, then stops this
        )

    def _wait(self, timeout: float) -> None:
        """Poll `/health` until it answers 200; respawn on another port if uvicorn could not bind its own."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.process.poll()
            if status == UVICORN_PORT_IN_USE:
                self._spawn()
            elif status is not None:
                raise RuntimeError(
                    f"Prefect's temporary API server exited with status {status} while starting"
                )
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as response:
                    if response.status == 200 and self.process.poll() is None:  # ours, not another's
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)
        raise RuntimeError(
            f"Prefect's temporary API server did not answer on {self.api_url} within {timeout:g} s "
            "(server.ephemeral.startup_timeout_seconds)"
        )

    @contextlib.contextmanager
    def ready(self) -> Iterator[None]:
        """Within: the flow's Prefect client talks to this server (after waiting for it to answer)."""
        if self.process is None:
            yield
            return
        from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

        self._wait(get_current_settings().server.ephemeral.startup_timeout_seconds)
        with temporary_settings(updates={PREFECT_API_URL: self.api_url}):
            try:
                yield
            finally:
                if self.process.poll() is None:  # a drain never hides the run's own error
                    with contextlib.suppress(Exception):
                        _drain_workers()

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None


@contextlib.contextmanager
def temporary_api() -> Iterator[TemporaryApi]:
    """Start Prefect's temporary server now unless an API is configured or ephemeral mode is off; stop it on exit."""
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    api = TemporaryApi(start=not settings.api.url and settings.server.ephemeral.enabled)
    try:
        yield api
    finally:
        api.stop()


def _drain_workers() -> None:
    """Send the logs and events Prefect still holds while the server is up (as `prefect_test_harness` does).

    Prefect's background workers flush at interpreter exit; by then this server is gone, and the log worker
    would retry for over a minute before giving up with "Error logging to API".
    """
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def drain() -> None:
        with contextlib.suppress(RuntimeError):  # the log worker never started
            result = APILogWorker.instance().drain()
            if inspect.isawaitable(result):
                await result
        result = EventsWorker.drain_all()
        if inspect.isawaitable(result):
            await result

    run_coro_as_sync(drain())
