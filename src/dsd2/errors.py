"""The one exception type for user errors (bad config, bad data, bad run directory).

The CLI turns it into a one-line message and exit code 2; anything else is a bug and
shows a traceback (always with ``--debug``).
"""


class UserError(Exception):
    """Something the user can fix: the message says what is wrong and how to fix it."""
