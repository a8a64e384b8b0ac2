"""The `wsss` command. Each sub-command lives beside the code it drives and registers itself here.

An error is one line on stderr (`wsss: error: ...`, exit status 1); `--debug` shows the traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# module path -> that module's `register(subparsers)` adds its sub-command(s)
_COMMAND_MODULES = (
    "wsss.data.synthvoc",
    "wsss.metrics",
    "wsss.pretrain",
    "wsss.runner",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wsss", description="Weakly supervised semantic segmentation workbench.")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("wsss: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the command line reports every failure as one line
        if args.debug:
            raise
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"wsss: error: {message} (--debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
