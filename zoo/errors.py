"""The one exception type for user mistakes (its message names the problem and the fix), and how
a command reports it and a mistyped option. Imports nothing of the project: every floor may raise it."""

import os
import re
import sys
import traceback
from collections.abc import Callable

from jsonargparse import ArgumentError, ArgumentParser


class ZooError(ValueError):
    """A mistake in what the user asked for (a name, a path, an option), with a message that
    says how to fix it. The entry points print it as one paragraph and exit with status 2."""


def command_parser(prog: str, description: str) -> ArgumentParser:
    """The parser of a command run by run_main: a mistyped option raises (run_main prints it as one
    paragraph, not argparse's usage block), and only whole option names count (argparse would take a
    prefix for the one option it begins: evaluate.py --data mnist for --data_dir mnist)."""
    return ArgumentParser(prog=prog, description=description, exit_on_error=False, allow_abbrev=False)


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
    except ArgumentError as e:  # an option's value outside its type (parsers made with exit_on_error=False)
        if debug:
            traceback.print_exc()
        print(f"error: {one_paragraph(str(e))}\n(see --help for the options)", file=sys.stderr)
        return 2
    except SystemExit as e:  # --help, or jsonargparse has printed its message already
        return e.code if isinstance(e.code, int) else 1


def one_paragraph(message: str) -> str:
    """jsonargparse's report of a value that fits none of an option's types, in one sentence:
    `--model.lr -0.1: not a valid value; it must be a number with v>0 (or null)`. Other messages as they are."""
    key = re.search(r'Parser key "([^"]+)"', message)
    refused = re.search(r"given class_path '([\w.]+)':\s*Option '(\w+)' is not accepted", message)
    if key and refused:  # --data.cutout on a datamodule without that option (moons)
        cls, option = refused.group(1), refused.group(2)
        return (f"--{key.group(1)}.{option}: {cls.rpartition('.')[2]} takes no option {option!r}. See the options it "
                f"takes with --{key.group(1)}.help {cls}, or leave this one out.")
    given = (re.search(r"Given value: (.*)", message) or re.search(r"Got value: (.*)", message)
             or re.search(r"Not of type \w+: (\S+) does not conform", message)
             or re.search(r"(?:invalid literal for int\(\) with base 10|could not convert string to float): '(.*)'",
                          message))
    reasons = [re.sub(r"\. Got value: .*$", "", r).strip()
               for r in re.findall(r"^\s*-?\s*(?:Not of type \w+: |Expected a )(.*)$", message, re.M)
               if "NoneType" not in r]
    if not (key and given and reasons):
        return message
    words = []
    for r in reasons:
        literal = re.fullmatch(r"typing\.Literal\[(.*)\]", r)
        restriction = re.search(r"restriction (.*)", r)
        words.append(f"one of {literal.group(1)}" if literal else
                     f"a number with {restriction.group(1)}" if restriction else
                     "a whole number" if r.startswith("invalid literal for int()") or r == "<class 'int'>" else
                     "a number" if r.startswith("could not convert string to float") or r == "<class 'float'>"
                     else "true or false" if r == "<class 'bool'>" else r)
    nullable = "NoneType" in message
    return (f"--{key.group(1)} {given.group(1).strip()}: not a valid value; it must be {' or '.join(words)}"
            f"{' (or null: the default)' if nullable else ''}.")
