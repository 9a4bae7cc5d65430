"""One exception type for every input problem a user can fix.

The CLI turns a MedalError into its message on stderr and exit code 1, never a traceback.
"""


class MedalError(Exception):
    """A bad input or environment, described in one sentence the user can act on."""
