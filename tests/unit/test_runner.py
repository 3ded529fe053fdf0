"""The runner stops a command that outlives its timeout with SIGTERM first (cryptsetup then
checkpoints its re-encryption), and with SIGKILL only after the grace period."""

import signal
import sys
import threading
from contextlib import contextmanager

import pytest

from apps.core import runner
from apps.core.errors import GatewayTimeout

# The child installs its SIGTERM handler, then unblocks SIGTERM (blocked by the test before
# the child starts, and inherited): a SIGTERM sent early waits for the handler, so what the
# test sees does not depend on how fast the child starts.
CHILD = """
import os, signal, sys, time
marker, exit_on_term = sys.argv[1], sys.argv[2] == "exit"
def on_term(signum, frame):
    with open(marker, "w") as fh:
        fh.write("SIGTERM")
    if exit_on_term:
        sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
with open(marker + ".pid", "w") as fh:
    fh.write(str(os.getpid()))
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
while True:
    time.sleep(0.05)
"""


@contextmanager
def _sigterm_blocked():
    assert threading.current_thread() is threading.main_thread()
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_a_command_past_its_timeout_gets_sigterm_and_stops_without_sigkill(tmp_path):
    marker = tmp_path / "marker"
    with _sigterm_blocked(), pytest.raises(GatewayTimeout, match="stopped with SIGTERM") as exc:
        runner.run([sys.executable, "-c", CHILD, str(marker), "exit"], timeout=1, kill_grace=300)
    assert marker.read_text() == "SIGTERM"
    assert "killed" not in exc.value.message


def test_a_command_that_ignores_sigterm_is_killed_after_the_grace(tmp_path):
    marker = tmp_path / "marker"
    with _sigterm_blocked(), pytest.raises(GatewayTimeout, match="killed after ignoring SIGTERM for 1 seconds"):
        runner.run([sys.executable, "-c", CHILD, str(marker), "stay"], timeout=1, kill_grace=1)
    assert marker.read_text() == "SIGTERM"  # it was asked first
    assert not _pid_alive(int((tmp_path / "marker.pid").read_text()))  # then killed, and reaped


def test_the_grace_comes_from_the_settings(settings, tmp_path):
    settings.COMMAND_KILL_GRACE = 1
    marker = tmp_path / "marker"
    with _sigterm_blocked(), pytest.raises(GatewayTimeout, match="for 1 seconds"):
        runner.run([sys.executable, "-c", CHILD, str(marker), "stay"], timeout=1)
    assert marker.read_text() == "SIGTERM"
