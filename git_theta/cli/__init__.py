"""The ``git theta`` command line: the only code that prints or exits.

Every command is thin: parse options, call one library function, render its result. Errors
raised by the library become one line on stderr and the exit code of their class.

git starts ``git-theta filter-process`` for every command that reads or writes a tracked
file, so that one is served without loading click or the other commands (``serve``); every
other command goes through the click tree in ``commands``.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``git-theta`` console script."""
    args = sys.argv[1:] if argv is None else argv
    try:
        if args == ["filter-process"]:
            from git_theta.cli.serve import filter_process

            return filter_process()
        from git_theta.cli.commands import run

        return run(args)
    except KeyboardInterrupt:  # Ctrl-C, even while the modules load: no traceback
        sys.stderr.write("git-theta: aborted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
