"""The ``evloop`` command."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="evloop", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="train CrossEntropyClassification on an embedded data set"
    )
    demo.add_argument("--dataset", choices=["digits", "cifar10"], default="digits")
    demo.add_argument("--data-dir", default="data", help="where CIFAR-10 is (or goes)")
    demo.add_argument(
        "--epochs", type=int, default=None, help="default: 5 for digits, 30 for cifar10"
    )
    demo.add_argument("--run-dir", default=None, help="default: runs/<dataset>-<time>")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "demo":
        from .demo import run_demo

        epochs = args.epochs or (5 if args.dataset == "digits" else 30)
        run_demo(epochs=epochs, run_dir=args.run_dir, dataset=args.dataset, data_dir=args.data_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
