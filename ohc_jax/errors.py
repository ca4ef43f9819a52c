"""The one exception type that command-line tools turn into a one-line message and exit code 2."""


class UsageError(Exception):
  """Bad input from the user: the message names the problem and the fix."""
