"""The one exception type for user mistakes (its message names the problem and the fix), and how
a command reports it. Imports nothing of the project: every floor may raise it."""

import os
import sys
import traceback
from collections.abc import Callable


class ZooError(ValueError):
    """A mistake in what the user asked for (a name, a path, an option), with a message that
    says how to fix it. The entry points print it as one paragraph and exit with status 2."""


def run_main(main: Callable[[list[str]], int | None], args: list[str]) -> int:
    """Run a command's main(args) as a program: a ZooError is one paragraph on stderr and exit status 2,
    a failed write (full disk, read-only folder) one paragraph and status 1; --debug adds the traceback."""
    debug = "--debug" in args
    try:
        return main([a for a in args if a != "--debug"]) or 0
    except ZooError as e:
        if debug:
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if debug:
            traceback.print_exc()
        name = os.fsdecode(e.filename) if e.filename is not None else "a file"  # torch passes bytes
        print(f"error: could not write {name}: {e.strerror or e}. Free some space or choose a writable place; "
              f"files already written are intact (they are written atomically).", file=sys.stderr)
        return 1
    except SystemExit as e:  # --help, or jsonargparse has printed its message already
        return e.code if isinstance(e.code, int) else 1
