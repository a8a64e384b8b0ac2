"""The `wsss` command. Each sub-command lives beside the code it drives and registers itself there;
only the module of the command being run is imported, so `wsss --help` answers without torch.

An error is one line on stderr (`wsss: error: ...`, exit status 1); `--debug` shows the traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from wsss import __version__

# command -> (the module whose `register(subparsers)` adds it, its one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("wsss.data.synthvoc", "datasets: generate SynthVOC, image labels of real VOC"),
    "eval": ("wsss.metrics", "evaluate a folder of label maps against ground truth"),
    "pretrain": ("wsss.pretrain", "pretrain the small backbone on a generated SynthVOC corpus"),
    "run": ("wsss.runner", "execute a notebook with parameters into reports/runs/ (papermill)"),
    "notebooks": ("wsss.runner", "list the notebooks and their parameters"),
    "study": ("wsss.claims", "every paper's claim over seeds: paired difference, 95%% CI, verdict"),
    "ceiling": ("wsss.ceiling", "final networks over seeds: the ground-truth ceiling and each method's weak/full "
                                "ratio, 95%% CIs"),
    "dose-response": ("wsss.dose_response", "a claim's effect at several strengths of its phenomenon"),
    "part-interventions": ("wsss.analysis.probes", "label flips and map mass with the part removed or moved, "
                                                   "every method vs the CAM over seeds"),
    "demo": ("wsss.runner", "SynthVOC + every method's main run into reports/demo/, then the comparison "
                            "(--full: ablations, final networks, claims study, into reports/)"),
}


def add_progress_flag(parser: argparse.ArgumentParser) -> None:
    """`--progress/--no-progress` for a command that trains for hours: bars by default."""
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                        help="progress bars of each run's training and scoring (default: on; with --jobs > 1 "
                             "each process's bars as text lines, redrawn at most every 30 s)")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser with `command`'s full arguments; other commands by name and help only."""
    parser = argparse.ArgumentParser(prog="wsss", description="Weakly supervised semantic segmentation workbench.")
    parser.add_argument("--version", action="version", version=f"wsss {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)
    if command in COMMANDS:
        importlib.import_module(COMMANDS[command][0]).register(sub)
    for name, (_, help_text) in COMMANDS.items():
        if name not in sub.choices:
            sub.add_parser(name, help=help_text)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
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
