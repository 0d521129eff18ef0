"""The run: request `index` of a seed (`job`), the family of a request's mutation (`family`), and the
command line that writes one request out as raw HTTP (`main`, behind tests/http_mutations.py)."""

import argparse
import random
import sys
from pathlib import Path

from . import json_mutations, protocol_mutations, v2_mutations, video_mutations
from .requests_model import OPERATORS, Pool, Request, templates

# Importing them registers their operators in OPERATORS, in this order (each imports the one before it).
MUTATION_MODULES = (json_mutations, v2_mutations, protocol_mutations, video_mutations)

GOOD_EVERY = 10  # every 10th request is a known-good one


def job(seed: int, index: int, pool: Pool, ctx: dict) -> Request:
    """Request `index` of the run: a good one every GOOD_EVERY-th (cycling through the routes and
    models, and through each one's forms and inputs), otherwise a template of a route and model chosen
    evenly, changed by one operator, all chosen by the request's own generator."""
    pairs = sorted(pool)
    if index % GOOD_EVERY == 0:
        n = index // GOOD_EVERY
        forms_of = pool[pairs[n % len(pairs)]]
        return forms_of[(n // len(pairs)) % len(forms_of)].render()
    rng = random.Random(f"{seed}:{index}")
    names = list(OPERATORS)
    weights = [OPERATORS[n][1] for n in names]
    while True:
        template = rng.choice(pool[rng.choice(pairs)])
        name = rng.choices(names, weights)[0]
        request = OPERATORS[name][2](rng, template, ctx)
        if request is not None:
            return request


def family(request: Request) -> str:
    name = request.mutation.split(":", 1)[0]
    return OPERATORS[name][0] if name in OPERATORS else "good"


def main() -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/, for support
    from support import encode, photo

    parser = argparse.ArgumentParser(description="Write request JOB of a fuzz run (raw HTTP) to stdout or --out.")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--job", type=int, required=True)
    parser.add_argument("--max-request-size", type=int, default=20971520)
    parser.add_argument("--token", default=None, help="an inference key to put in the request")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    request = job(args.seed, args.job, templates(encode(photo("chelsea"))), {"max_request_size": args.max_request_size})
    raw = request.raw(token=args.token)
    print(f"# {request.route} {request.model} {request.form} {request.mutation}: {len(raw)} bytes", file=sys.stderr)
    if args.out:
        with open(args.out, "wb") as f:
            f.write(raw)
    else:
        sys.stdout.buffer.write(raw)
    return 0
