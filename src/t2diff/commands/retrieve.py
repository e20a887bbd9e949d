"""``t2diff retrieve``: batch top-K for a file of users or histories -> Parquet (user, rank, item, score)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from t2diff.commands.common import add_runtime_args, fail


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("retrieve", help="batch top-K retrieval for a file of users or histories",
                       description="Input (.parquet/.csv/.tsv/.jsonl/.json): a column user_id (original user ids; "
                       "each user's full prepared history is used) OR a column history (a list, or a space/comma-"
                       "separated string, of original item ids, oldest first; optional timestamps, request_time, "
                       "and user_id as a label). Output Parquet: user, rank (1 = best), item, score, original "
                       "ids. Unknown user / item ids are an error naming the row and the ids, unless "
                       "--skip-unknown.")
    p.add_argument("source", help="an export folder (its checkpoint + index), or a run directory / .pt "
                   "(exact flat index built in memory)")
    p.add_argument("--input", required=True, help="file of users or histories")
    p.add_argument("--out", required=True, help="output .parquet")
    p.add_argument("--k", type=int, help="items per row (default: 100, or the number of items if fewer)")
    p.add_argument("--exclude-seen", action="store_true", help="never return an item of the user's history")
    p.add_argument("--skip-unknown", action="store_true", help="drop unknown item ids from histories and skip "
                   "rows with an unknown user or no known item (reported on stderr) instead of failing")
    p.add_argument("--export", help="with a run directory: use this export folder's index")
    p.add_argument("--batch-size", type=int, default=256, help="users per forward pass (models with stochastic "
                   "inference, e.g. t2diff, draw noise per batch row: --batch-size 1 matches the service exactly)")
    p.add_argument("--data", help="prepared dataset (default: the one recorded in the checkpoint / export)")
    add_runtime_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import pyarrow.parquet as pq

    from t2diff.data.errors import DataError
    from t2diff.retrieval.export import open_retriever
    from t2diff.retrieval.offline import retrieve_frame
    from t2diff.retrieval.tables import read_table
    from t2diff.retrieval.user_tower import ModelOutputError

    try:
        retriever = open_retriever(args.source, args.export, args.data, runtime=args.runtime,
                                   onnx_threads=args.onnx_threads)
        df = read_table(args.input)
        k = args.k if args.k is not None else min(100, retriever.index.size)
        table, stats = retrieve_frame(retriever, df, k, args.exclude_seen, args.skip_unknown, args.batch_size)
    except (FileNotFoundError, ValueError, DataError, ModelOutputError) as e:  # Input/ExportError: ValueErrors
        return fail(str(e))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out)
    for _row, reason in stats.skipped_rows or []:
        print(f"skipped {reason}", file=sys.stderr)
    if stats.dropped_items:
        print(f"dropped {stats.dropped_items} unknown item id(s) from histories", file=sys.stderr)
    print(f"{stats.answered}/{stats.rows} rows answered, {table.num_rows} (user, item) rows -> {out}")
    return 0
