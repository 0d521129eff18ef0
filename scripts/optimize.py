"""make optimize MODEL=<name> [QUICK=1] [DRY_RUN=1]: measure the model's variants on this host, keep those that
agree with fp32 (top-1 >= 99%, cosine >= 0.999 for embeddings), write the fastest into models/<name>/model.yaml
and report (results/optimize/<name>/). The logic is benchkit.optimize; docs/optimize.md says what it measures.

    .venv/bin/python scripts/optimize.py --model mobilenet_v2 [--quick] [--dry-run] [--concurrency 16]
"""

import sys

from benchkit.optimize import main

if __name__ == "__main__":
    sys.exit(main())
