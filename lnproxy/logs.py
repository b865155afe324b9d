"""Log observers for twistd's ``--logger`` option.

lnproxy logs through ``twisted.logger`` with structured fields (``node``,
``conn``, ``webhook``, ``reason``, ...).  twistd writes human-readable text
by default; log shippers prefer one JSON object per line, which is what
:func:`json_stdout` gives::

    twistd -n --logger lnproxy.logs.json_stdout lnproxy --listen ...

Each line is ``twisted.logger.eventAsJSON`` of one event: every field, plus
``log_format``, ``log_namespace``, ``log_time`` (unix seconds),
``log_level`` as a plain name (``"info"``, ``"warn"``, ...), a failure as
``log_failure`` plus its formatted traceback as ``log_traceback`` when
there is one, and ``log_text``,
the formatted message, so that a shipper need not understand Twisted's
format strings.  The in-process objects ``log_logger`` and ``log_source``
are left out.

Nothing secret is ever put into a log event (no keys, acts or signatures);
``tests/test_logging.py`` checks it over a whole run.
"""

from __future__ import annotations

import sys
from typing import IO, Any

from twisted.logger import (
    FileLogObserver,
    ILogObserver,
    eventAsJSON,
    formatEvent,
)
from zope.interface import implementer

__all__ = ["json_stdout", "json_file_observer", "event_as_json_line"]

#: Record separator: plain newlines, so the output is JSON Lines.
_NEWLINE = "\n"


def event_as_json_line(event: dict[str, Any]) -> str:
    """One log event as one line of JSON (with the formatted ``log_text``)."""
    event = dict(event)
    event.pop("log_logger", None)
    event.pop("log_source", None)
    level = event.get("log_level")
    if level is not None:
        event["log_level"] = getattr(level, "name", str(level))
    failure = event.get("log_failure")
    if failure is not None:
        try:
            event["log_traceback"] = failure.getTraceback()
        except Exception:
            pass
    try:
        event["log_text"] = formatEvent(event)
    except Exception:  # a broken format string must not lose the event
        event["log_text"] = str(event.get("log_format"))
    try:
        return eventAsJSON(event) + _NEWLINE
    except ValueError:
        # eventAsJSON flattens the format string too; keep a broken one as
        # plain data instead.
        event["log_format_unparsed"] = str(event.pop("log_format", ""))
        return eventAsJSON(event) + _NEWLINE


@implementer(ILogObserver)
class _JsonLines(FileLogObserver):
    """A :class:`FileLogObserver` writing JSON Lines."""

    def __init__(self, out: IO[str]) -> None:
        super().__init__(out, event_as_json_line)


def json_file_observer(out: IO[str]) -> ILogObserver:
    """An observer writing each event to ``out`` as one JSON line."""
    return _JsonLines(out)


def json_stdout() -> ILogObserver:
    """The ``--logger`` factory: JSON lines on standard output."""
    return json_file_observer(sys.stdout)
