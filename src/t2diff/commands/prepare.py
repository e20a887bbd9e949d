"""``t2diff prepare``: read a dataset, filter, remap ids, cache it."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

from t2diff.commands.common import dump, fail
from t2diff.data.errors import DataError
from t2diff.data.generic import ColumnSpec
from t2diff.data.kuairand import DEFAULT_FILTERS
from t2diff.data.prepare import FilterSpec, prepare
from t2diff.data.sources import DATASETS, SourceSpec, load_source


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare", help="read a dataset and cache it for training",
                       description="Read ML-1M, KuaiRand or a generic CSV/TSV/Parquet log; remap ids (0 = padding); "
                       "drop short users; order chronologically; write a deterministic cache with meta.json.")
    p.add_argument("dataset", choices=DATASETS)
    p.add_argument("--data-dir", help="root of the data sets (default: $T2DIFF_DATA_DIR)")
    p.add_argument("--input", nargs="+", default=[], help="files or globs overriding the dataset's default "
                   "(ml-1m: ratings.dat / ml-1m.zip / sequences.tsv; kuairand: log_*.csv; generic: any)")
    p.add_argument("--out", help="cache directory (default: cache/<dataset>)")
    p.add_argument("--user-col", default="user_id")
    p.add_argument("--item-col", default="item_id")
    p.add_argument("--time-col")
    p.add_argument("--time-unit", default="s", choices=["s", "ms", "us", "ns"])
    p.add_argument("--order-col")
    p.add_argument("--rating-col")
    p.add_argument("--sep", help="field separator for CSV/TSV (default by extension)")
    p.add_argument("--encoding", default="utf-8")
    p.add_argument("--filter", nargs="*", default=list(DEFAULT_FILTERS), dest="filters",
                   help="kuairand row filters col==value (default: %(default)s; pass --filter alone for none)")
    p.add_argument("--item-features", help="side-feature file (movies.dat, video_features_basic_*.csv)")
    p.add_argument("--no-features", action="store_true", help="skip side features")
    p.add_argument("--min-user-interactions", type=int, default=5)
    p.add_argument("--min-item-interactions", type=int, default=1)
    p.add_argument("--min-rating", type=float)
    p.add_argument("--allow-fractional-ratings", action="store_true",
                   help="accept ratings that are not whole numbers, e.g. MovieLens 10M's half stars in the ML-1M "
                   "'::' format (default: a fractional rating is an error; NaN, inf and negative ones always are)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    spec = SourceSpec(
        dataset=args.dataset, data_dir=args.data_dir, inputs=args.input,
        columns=ColumnSpec(user=args.user_col, item=args.item_col, time=args.time_col, order=args.order_col,
                           rating=args.rating_col, time_unit=args.time_unit),
        sep=args.sep, encoding=args.encoding, filters=args.filters, item_features=args.item_features,
        features=not args.no_features, allow_fractional_ratings=args.allow_fractional_ratings,
    )
    filt = FilterSpec(args.min_user_interactions, args.min_item_interactions, args.min_rating)
    try:
        inter = load_source(spec)
        # the recipe (absolute paths) lets a checkpoint's dataset be rebuilt if the cache is deleted
        extra = {"reader": {"filters": args.filters} if args.dataset == "kuairand" else {},
                 "recipe": {"source": spec.recipe(), "filters": asdict(filt)}}
        if args.allow_fractional_ratings:  # only when set, so the default caches' meta stays as it was
            extra["reader"]["allow_fractional_ratings"] = True
        meta = prepare(inter, Path(args.out or f"cache/{args.dataset}"), filt, args.dataset, extra)
    except DataError as e:
        return fail(str(e))
    print(dump({k: meta[k] for k in ("dataset", "num_users", "num_items", "num_interactions",
                                     "num_raw_interactions", "has_time")}))
    print(f"cached in {args.out or f'cache/{args.dataset}'}")
    return 0
