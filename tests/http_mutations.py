"""Write request JOB of a seeded HTTP fuzz run (tests/http_fuzz/) out as raw HTTP, to stdout or --out:

    .venv/bin/python tests/http_mutations.py --seed 20251717 --job 123 [--token KEY] [--out req.http]
"""

import sys

from http_fuzz.sequence import main

if __name__ == "__main__":
    sys.exit(main())
