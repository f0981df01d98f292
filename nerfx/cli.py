"""What every command line shares: the --backend and --device options, and one way to end on a
user's mistake (a missing or malformed file, a bad setting) with a message instead of a traceback.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from nerfx.ops import backend_names
from nerfx.trainers import USER_ERRORS


def add_backend_option(parser: argparse.ArgumentParser) -> None:
    """--backend, which every command line applies with nerfx.ops.use_backend(args.backend)."""
    parser.add_argument("--backend", choices=backend_names(),
                        help="backend of every op that has it, for this command: a run setting, "
                             "not the model's (default: $NERFX_BACKEND, else auto)")


def add_device_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="torch device to run on (default: cuda when there is one)")


@contextmanager
def user_errors(prog: str) -> Iterator[None]:
    """Turns a user's mistake into `prog: message` on stderr and exit status 1."""
    try:
        yield
    except USER_ERRORS as exc:
        raise SystemExit(f"{prog}: {exc}") from None
