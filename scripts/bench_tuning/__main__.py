"""``python scripts/bench_tuning [--quick | --smoke] [--out DIR]``: this section alone."""

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from bench_tuning import ROOT, run  # noqa: E402

parser = argparse.ArgumentParser(description="autobatch against the grid and the baselines at equal compute")
group = parser.add_mutually_exclusive_group()
group.add_argument("--quick", action="store_true", help="two tasks, 3 tuner seeds (minutes)")
group.add_argument("--smoke", action="store_true",
                   help="tiny settings, every piece of the machinery once (about a minute; figures to --out)")
parser.add_argument("--out", type=pathlib.Path, default=ROOT / "out" / "bench")
args = parser.parse_args()
print(run(args.quick, args.out, mode="smoke" if args.smoke else "quick" if args.quick else "full"))
