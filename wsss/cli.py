"""The `wsss` command. Each sub-command lives beside the code it drives and registers itself here."""
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
    sub = parser.add_subparsers(dest="command", required=True)
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
