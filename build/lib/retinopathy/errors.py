"""The one exception type for a user's mistake: the CLI prints its message as a single line, never a traceback."""


class UserError(Exception):
    """Bad input a user can fix (a missing file, an unknown config key, a malformed CSV).

    The message names the file or row and says what to do about it.
    """
