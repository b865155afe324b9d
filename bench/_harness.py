"""The process harness that bench/relay.py and bench/scale.py share.

Both start child processes (this script in a role, or ``twistd -n
lnproxy``), pinned to a core with ``taskset`` when asked, logging to a file,
talking over a line-based stdin/stdout channel, and stopped with SIGTERM
(SIGKILL when they do not go).  The process itself is
:class:`lnproxy.testing.ProxyProcess`; ports and the twistd command line
come from :mod:`lnproxy.testing` too.
"""

from __future__ import annotations

import os
import select
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

#: The repository root.
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lnproxy.testing import (  # noqa: E402 (ROOT must be on the path first)
    ProxyProcess,
    free_port,
    twistd_command,
)

__all__ = [
    "ROOT",
    "BenchChild",
    "ChildGone",
    "child_env",
    "cpu_seconds",
    "free_port",
    "pinned",
    "proxy_argv",
    "python_argv",
]


class ChildGone(Exception):
    """The child closed its stdout (it exited)."""


def pinned(argv: Sequence[str], core: int | None) -> list[str]:
    """``argv`` under ``taskset -c core`` (as is when ``core`` is None;
    taskset execs the command, so the pid stays the same)."""
    prefix = ["taskset", "-c", str(core)] if core is not None else []
    return [*prefix, *argv]


def python_argv(script: str | Path, core: int | None, *args: str) -> list[str]:
    """argv running ``script`` (a child role) unbuffered, pinned to ``core``."""
    return pinned([sys.executable, "-u", str(Path(script).resolve()), *args], core)


def child_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a child: the repository first on ``PYTHONPATH``."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def proxy_argv(
    port: int,
    data_dir: str,
    *extra: str,
    core: int | None = None,
    listen: str | None = None,
) -> tuple[list[str], dict[str, str]]:
    """``twistd -n lnproxy`` on ``port`` (see
    :func:`lnproxy.testing.twistd_command`), pinned to ``core``."""
    argv, env = twistd_command(port, data_dir, *extra, listen=listen)
    return pinned(argv, core), env


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds.

    :raise OSError: when the process is gone.
    """
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    fields = text[text.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state): utime is field 14, stime field 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class BenchChild(ProxyProcess):
    """A named child with, when ``control``, a line channel on its
    stdin/stdout (its stderr goes to ``log_path``).

    :param name: for messages and logs.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: str | Path,
        env: Mapping[str, str],
        cwd: str | Path | None = None,
        control: bool = True,
        preexec_fn: Callable[[], Any] | None = None,
        port: int | None = None,
    ) -> None:
        self.name = name
        self._buf = b""
        super().__init__(
            argv,
            env,
            str(log_path),
            port=port,
            preexec_fn=preexec_fn,
            cwd=None if cwd is None else str(cwd),
            pipes=control,
        )

    def read_line(self, deadline: float) -> bytes | None:
        """The next line of its stdout (without the newline), or None when
        ``deadline`` (``time.monotonic()``) passes first.

        :raise ChildGone: when its stdout ends.
        """
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], min(left, 1.0))
            if ready:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    raise ChildGone(self.name)
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line

    def write_line(self, line: bytes) -> None:
        """One line on its stdin."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + b"\n")
        self.proc.stdin.flush()

    def cpu_seconds(self) -> float:
        """User + system CPU time it has used so far (NaN once gone)."""
        try:
            return cpu_seconds(self.proc.pid)
        except (OSError, IndexError, ValueError):
            return float("nan")
