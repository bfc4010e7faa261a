"""The ``filmstyle`` command: the parser of every command, and one place that turns a
FilmstyleError into one line on stderr with exit code 2."""
from __future__ import annotations

import argparse
import sys

from pipeline.errors import FilmstyleError

from .args import EPILOG


def build_parser() -> argparse.ArgumentParser:
    from . import queue_cmds, render_cmds, tool_cmds, train_cmd

    parser = argparse.ArgumentParser(
        prog="filmstyle", epilog=EPILOG,
        description="Stylize whole films with neural style transfer: shots, chunks, temporal state, "
                    "reassembly with the original audio.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    render_cmds.add_commands(sub)
    queue_cmds.add_commands(sub)
    tool_cmds.add_commands(sub)
    train_cmd.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from pipeline.memtune import tune_malloc

    tune_malloc()
    try:
        from methods import load_plugins

        load_plugins()  # before the parser: a plug-in's options are flags
    except FilmstyleError as e:
        print(f"filmstyle: error: {e}", file=sys.stderr)
        return e.exit_code
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except FilmstyleError as e:
        print(f"filmstyle: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("filmstyle: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
