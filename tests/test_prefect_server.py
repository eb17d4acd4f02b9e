"""flows/server.py: Prefect's temporary API server started before the command's own work, for real."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import sys
    from prefect import flow
    from prefect.client.orchestration import get_client
    from flows.server import temporary_api

    @flow(name="hello")
    def hello() -> int:
        return 42

    with temporary_api() as api:
        started = api.process is not None
        process = api.process
        with api.ready():
            assert hello() == 42
            with get_client(sync_client=True) as client:
                runs = client.read_flow_runs()
                url = client.api_url
    print("started", started)
    print("url", url, "==", api.api_url if started else None)
    print("runs", [r.state_type.value for r in runs])
    print("stopped", process is None or process.poll() is not None)
    print("server_app_imported", "prefect.server.api.server" in sys.modules)
    """
)


def _run(tmp_path: Path, **env: str) -> tuple[dict[str, str], str, float]:
    base = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    base.update(PREFECT_HOME=str(tmp_path / "prefect"), OMP_NUM_THREADS="1", **env)
    began = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=REPO, env=base, capture_output=True, text=True, timeout=300
    )
    seconds = time.perf_counter() - began
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if " " in line)
    return lines, proc.stderr, seconds


def test_without_an_api_the_flow_runs_on_the_early_server_which_stops_after(tmp_path: Path) -> None:
    lines, stderr, seconds = _run(tmp_path)
    assert lines["started"] == "True"
    url, _, expected = lines["url"].partition(" == ")
    assert url.rstrip("/") == expected.rstrip("/") and url.startswith("http://127.0.0.1:")
    assert lines["runs"] == "['COMPLETED']"  # the run is recorded on that server
    assert lines["stopped"] == "True"
    assert lines["server_app_imported"] == "False"  # the command never imports the server application
    # the logs were sent while the server was up: nothing retried against a stopped server at exit
    assert "Error logging to API" not in stderr
    assert seconds < 120


def test_with_an_api_configured_nothing_is_started(tmp_path: Path, prefect_server: str) -> None:
    lines, _, _ = _run(tmp_path, PREFECT_API_URL=prefect_server)
    assert lines["started"] == "False"
    assert lines["runs"].startswith("[") and "COMPLETED" in lines["runs"]


KILLED = textwrap.dedent(
    """
    import time
    from flows.server import temporary_api

    with temporary_api() as api:
        with api.ready():
            print(api.process.pid, flush=True)
            time.sleep(600)
    """
)


@pytest.mark.skipif(sys.platform != "linux", reason="the server watches its parent through Linux's prctl")
def test_a_command_killed_outright_leaves_no_server_behind(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), OMP_NUM_THREADS="1")
    command = subprocess.Popen(
        [sys.executable, "-c", KILLED], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True
    )
    server = int(command.stdout.readline())  # the server answers /health
    try:
        os.kill(command.pid, signal.SIGKILL)  # no cleanup runs in the command
        command.wait()
        deadline = time.monotonic() + 30
        while _alive(server) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(server)
    finally:
        if _alive(server):  # a failed test leaves no server behind either
            os.kill(server, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, ended but not yet reaped by init, counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False
