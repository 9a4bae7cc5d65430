"""Messages for people go to stderr, so that stdout can carry --json output alone."""

import sys


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def warn(message: str) -> None:
    log(f"warning: {message}")
