"""What a command says when it cannot do what it was asked, for a reason its user can fix.

Raised anywhere (a store that refuses a Redis, a loader that refuses a namespace with state, a
click log whose columns do not match); ``service.cli`` is the one place that turns it into
one line on stderr, saying what to do, and the exit code ``REFUSED``. Anything else that
escapes a command is a bug and keeps its traceback."""

from __future__ import annotations

REFUSED = 2
"""Exit code of a command that refused: a bad flag (argparse's own code), a configuration or
an input it cannot work with. Restarting it unchanged would only refuse again."""


class Refused(Exception):
    """A failure the user can fix; the message is one line saying what to do."""
