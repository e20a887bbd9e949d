"""``t2diff train``: train a model on a prepared dataset under a protocol; writes metrics.json."""

from __future__ import annotations

import argparse

from t2diff.commands.common import add_config_args, add_progress_arg, dump, fail, metrics_table
from t2diff.config import ConfigError, load_config
from t2diff.data.errors import DataError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model (checkpoint per epoch, --resume after an interruption)",
                       description="Train with Adam and full-softmax cross-entropy (default); select the model on "
                       "validation (loo) or report the last epoch's test metrics (paper). Writes last.pt, best.pt, "
                       "metrics.jsonl and metrics.json into the run directory.")
    add_config_args(p)
    p.add_argument("--run-dir", required=True, help="where checkpoints and metrics go")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its last checkpoint")
    p.add_argument("--device", default="cpu")
    add_progress_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from t2diff import distributed
    from t2diff.train import Trainer, TrainingError

    try:
        cfg = load_config(args.config, args.overrides)
        trainer = Trainer(cfg, args.run_dir, progress=not args.no_progress, device=args.device)
        out = trainer.fit(resume=args.resume)
    except (ConfigError, DataError, TrainingError) as e:
        return fail(str(e))
    distributed.cleanup(trainer.dist)
    if not trainer.dist.is_main:
        return 0
    rows = {k: v for k, v in out.items() if isinstance(v, dict) and k not in ("valid",)}
    if "valid" in out:
        rows = {"valid": out["valid"], **rows}
    print(metrics_table(rows))
    print(dump({k: v for k, v in out.items() if not isinstance(v, dict)}))
    return 0
