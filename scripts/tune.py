"""make tune: sweep workers x intra-op threads x batchSize x maxBatchDelay for one model, and write
the best setting whose p99 meets a latency target, as a config fragment.

A door over benchkit.tune (the sweep, its pruning and the report; its docstring says how points are
measured and chosen):

    python scripts/tune.py --model mobilenet_v2 --p99-ms 250 [--concurrency 16] [--repeats 3] [--quick]

Writes results/tune/<model>/: frontier.md, frontier.png, results.json, config-fragment.properties
(a `models=` entry for config.properties) and model-config-values.yaml (the same values for the
model's models/<name>/model.yaml (torchserve: and handler:)).
"""

import argparse
import sys

from benchkit import tune
from tskit.declaration import declared


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, choices=sorted(d.name for d in declared()))
    parser.add_argument("--p99-ms", type=float, required=True)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=6)
    parser.add_argument("--warmup", type=float, default=2)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--delays", type=int, nargs="+", default=[2, 10, 25])
    parser.add_argument("--workload", help="input (bench.py names); default per model")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per point (its spread is the noise)")
    parser.add_argument("--min-drop", type=float, default=0.03,
                        help="a larger batch is pruned only when also this much slower (median) beyond the noise")
    parser.add_argument("--quick", action="store_true", help="small grid, 2 repeats, under 5 minutes")
    parser.add_argument("--out", help="default results/tune/<model>")
    args = parser.parse_args(argv)
    try:
        tune.settle(args)
    except ValueError as err:
        parser.error(str(err))
    return tune.run(args)


if __name__ == "__main__":
    sys.exit(main())
