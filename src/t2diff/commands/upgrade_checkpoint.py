"""``t2diff upgrade-checkpoint``: make a checkpoint from before self-contained checkpoints self-contained.

Checkpoints now carry what rebuilds their model without the prepared dataset. This adds that to a checkpoint written
before (in place, atomically), reading the prepared dataset it was trained on once.
"""

from __future__ import annotations

import argparse

from t2diff.commands.common import command_parser, fail


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = command_parser(sub, "upgrade-checkpoint", "add DataInfo, item features and item ids to an old checkpoint",
                       __doc__)
    p.add_argument("checkpoint", help="a run directory (its selected checkpoint) or a .pt file")
    p.add_argument("--data", help="the prepared dataset it was trained on (default: the one in its config)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from t2diff.data.errors import DataError
    from t2diff.run import upgrade_checkpoint

    try:
        path = upgrade_checkpoint(args.checkpoint, args.data)
    except (FileNotFoundError, ValueError, DataError) as e:
        return fail(str(e))
    print(f"{path}: self-contained")
    return 0
