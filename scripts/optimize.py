"""make optimize MODEL=<name> [QUICK=1] [DRY_RUN=1]: measure the model's variants on this host, keep those that
agree with fp32 (top-1 >= 99%, cosine >= 0.999 for embeddings), tune the fastest one's batching (make tune's sweep at
a p99 target), write both into models/<name>/model.yaml and report (results/optimize/<name>/). The logic is
benchkit.optimize; docs/optimize.md says what it measures.

    .venv/bin/python scripts/optimize.py --model mobilenet_v2 [--quick] [--dry-run] [--concurrency 16] [--p99-ms 500] [--no-tune]
"""

import sys

from benchkit.optimize import main

if __name__ == "__main__":
    sys.exit(main())
