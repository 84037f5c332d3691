#!/usr/bin/env python3
"""whylogs side of `cargo bench -p flotilla-common --bench profile_peer` (docs/BENCHMARKS.md):
profiles the same reference and current CSV files the Rust bench profiles, and prints one JSON
object on stdout that the bench parses. Progress and warnings go to stderr.

    .cache/peer-venv/bin/python deploy/bench/whylogs_peer.py REFERENCE.csv CURRENT.csv \
        --out-dir DIR [--rounds 5] [--small-k 200]

For each configuration (whylogs' defaults, whose distribution metric is a KLL doubles sketch
with k=1024, and the same with k set to --small-k), for each file:
- `pd.read_csv` time and `why.log(df)` time, the median of --rounds rounds after one untimed
  warm-up round;
- the serialised profile (`view.serialize()`, written to DIR so the Rust side can compress it
  with the same zstd level as Flotilla's) and the bytes of the KLL sketches alone;
- KS between reference and current per feature from each round's KLL sketches, computed the
  way Flotilla does (common/src/sketch/drift.rs): the largest |F_ref - F_cur| over the
  quantiles of both sketches at ranks 0, 0.001, ..., 1, with inclusive ranks.
Exact KS per feature comes from scipy.stats.ks_2samp on the raw columns.
"""

import argparse
import json
import os
import statistics
import sys
import time

# whylogs sends anonymous usage statistics unless this is set; keep the bench off the network.
os.environ.setdefault("WHYLOGS_NO_ANALYTICS", "True")

import pandas as pd  # noqa: E402
import scipy  # noqa: E402
import whylogs as why  # noqa: E402
from scipy.stats import ks_2samp  # noqa: E402
from whylogs.core.metrics.metrics import MetricConfig  # noqa: E402
from whylogs.core.schema import DatasetSchema  # noqa: E402

# Ranks at which both sketches are queried for the KS grid (Flotilla: GRID_QUANTILES = 1000).
GRID_QUANTILES = 1000


def median_seconds(action, rounds):
    """Runs `action` once untimed, then `rounds` times; returns (median seconds, last result)."""
    result = action()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        result = action()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result, times


def sketch_ks(reference, current):
    """KS from two kll_doubles_sketch objects, on the same grid as Flotilla's numeric_drift."""
    ranks = [i / GRID_QUANTILES for i in range(GRID_QUANTILES + 1)]
    points = sorted(
        set(reference.get_quantiles(ranks, inclusive=True))
        | set(current.get_quantiles(ranks, inclusive=True))
    )
    f_ref = reference.get_cdf(points, inclusive=True)[:-1]
    f_cur = current.get_cdf(points, inclusive=True)[:-1]
    return max(abs(a - b) for a, b in zip(f_ref, f_cur))


def kll(view, column):
    return view.get_column(column).get_metric("distribution").kll.value


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("reference")
    parser.add_argument("current")
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--small-k", type=int, default=200)
    args = parser.parse_args()

    files = {"reference": args.reference, "current": args.current}
    read_seconds, frames = {}, {}
    for side, path in files.items():
        read_seconds[side], frames[side], _ = median_seconds(
            lambda path=path: pd.read_csv(path), args.rounds
        )
    columns = list(frames["reference"].columns)

    exact = [
        float(ks_2samp(frames["reference"][c].to_numpy(), frames["current"][c].to_numpy()).statistic)
        for c in columns
    ]

    configs = [
        ("default", None),
        (f"k{args.small_k}", MetricConfig(large_kll_k=False, kll_k=args.small_k)),
    ]
    results = []
    for label, metric_config in configs:
        schema = None if metric_config is None else DatasetSchema(default_configs=metric_config)
        entry = {"label": label, "log_seconds": {}, "profile_bytes": {}, "kll_bytes": {},
                 "profile_files": {}, "round_seconds": {}}
        views = {}
        for side, frame in frames.items():
            round_views = []

            def log(frame=frame, round_views=round_views):
                view = why.log(frame, schema=schema).view()
                round_views.append(view)
                return view

            seconds, view, times = median_seconds(log, args.rounds)
            views[side] = round_views[1:]  # the timed rounds
            entry["log_seconds"][side] = seconds
            entry["round_seconds"][side] = times
            serialized = view.serialize()
            path = os.path.join(args.out_dir, f"whylogs_{label}_{side}.bin")
            with open(path, "wb") as f:
                f.write(serialized)
            entry["profile_files"][side] = path
            entry["profile_bytes"][side] = len(serialized)
            entry["kll_bytes"][side] = sum(len(kll(view, c).serialize()) for c in columns)
        some_view = views["reference"][0]
        entry["kll_k"] = kll(some_view, columns[0]).get_k()
        entry["metrics"] = sorted(some_view.get_column(columns[0]).get_metric_names())
        # One KS per feature per round: round i's reference against round i's current.
        entry["ks_sketch"] = [
            [sketch_ks(kll(ref, c), kll(cur, c)) for c in columns]
            for ref, cur in zip(views["reference"], views["current"])
        ]
        results.append(entry)
        print(f"whylogs {label}: done", file=sys.stderr)

    json.dump(
        {
            "whylogs": why.__version__,
            "pandas": pd.__version__,
            "scipy": scipy.__version__,
            "python": sys.version.split()[0],
            "rounds": args.rounds,
            "columns": columns,
            "rows": {side: len(frame) for side, frame in frames.items()},
            "read_csv_seconds": read_seconds,
            "ks_exact_scipy": exact,
            "configs": results,
        },
        sys.stdout,
    )
    print()


if __name__ == "__main__":
    main()
