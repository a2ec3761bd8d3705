"""``python scripts/bench_tuning [--quick] [--out DIR] [--reuse-grid]``: this section alone."""

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from bench_tuning import ROOT, run  # noqa: E402

parser = argparse.ArgumentParser(description="autobatch against the grid and the baselines at equal compute")
parser.add_argument("--quick", action="store_true", help="smaller grids, fewer repeats (minutes)")
parser.add_argument("--out", type=pathlib.Path, default=ROOT / "out" / "bench")
parser.add_argument("--reuse-grid", action="store_true",
                    help="reuse the ground-truth grid saved in --out by an earlier run with the same settings")
args = parser.parse_args()
print(run(args.quick, args.out, reuse_grid=args.reuse_grid))
