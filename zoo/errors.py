"""The one exception type for user mistakes: its message names the problem and the fix."""


class ZooError(ValueError):
    """A mistake in what the user asked for (a name, a path, an option), with a message that
    says how to fix it. The entry points print it as one paragraph and exit with status 2."""
