"""Answer checks for `make bench`: every load point is right, not just fast.

Before a setup's first load point one request goes alone and its answer is checked against what is
known to be right (the cat photo's top-1 label, each text's topic, an L2-normalised embedding). The
AnswerCheck built from it is then applied to a sample of the answers at EVERY load point (warm-up and
timed, every setup, every format variant including int8, the JSON bodies and the LitServe peer) by the
load generator (tskit.load; wrk's tskit/wrk_checked.lua); each row records how many answers
were checked, how many were wrong, and the first failure. check_table() reports them per row.
"""

from typing import Iterable, List, Optional

import requests

from tskit.client import TorchServeClient
from tskit import kinds
from tskit.kinds.answers import CHECK_EVERY
from tskit.load import AnswerCheck

# Right answers where known: the photo is skimage's chelsea (a cat); the texts' topics.
CAT_LABELS = ("tabby", "tiger cat", "Egyptian cat")
TEXT_TOPICS = {"text_short": "Sports", "text_medium": "Business", "text_long": "Sci/Tech"}


def expected_first(workload_name: str, labels: Iterable[str]) -> Optional[tuple]:
    """The right top-1 answers for an input, where the model's labels name them (a photo's cat, a text's topic)."""
    name = workload_name.removeprefix("json_")
    known = CAT_LABELS if name.startswith("jpeg_") else (TEXT_TOPICS[name],) if name in TEXT_TOPICS else ()
    return known if set(known) & set(labels) else None


def answer_check(client: TorchServeClient, model: str, workload_name: str, workload: dict, kind: str,
                 stock: bool = False, pipeline: bool = False) -> AnswerCheck:
    """One request to `model` before timing (through tskit.client): the answer must be right. Returns the check
    that a sample of every load point's answers must pass (see `check_answer`). Raises AssertionError when even
    the lone answer is wrong."""
    with open(workload["path"], "rb") as f:
        response = client.infer(model, f.read(), workload["content_type"], timeout=120)
    return check_answer(response, client.prediction_url(model), workload_name, kind, stock, pipeline)


def check_answer(response: requests.Response, url: str, workload_name: str, kind: str, stock: bool = False,
                 pipeline: bool = False) -> AnswerCheck:
    """A lone answer from `url` checked: the check a sample of every load point's answers must then pass (the
    right top-1 label and the top-k length; an embedding's cosine with this one). AssertionError when wrong."""
    if response.status_code != 200:
        raise AssertionError(f"{url} answered {response.status_code}: {response.text[:300]}")
    answer = response.json()
    if stock:  # the stock handler: {"tabby": 0.4, ...} (or a list of them)
        top = answer[0] if isinstance(answer, list) else answer
        first = next(iter(top))
        assert first in CAT_LABELS, f"{url} answered {first}"
        return AnswerCheck("first_key", CAT_LABELS, every=CHECK_EVERY)
    answer_form = kinds.kind(kind).answer
    if pipeline:  # all-zero logits: no right label, but a whole answer of the same shape
        labels = [p["label"] for p in answer["predictions"]]
        return AnswerCheck("first_label", (labels[0],), labels=len(labels), every=CHECK_EVERY)
    known = expected_first(workload_name, [p["label"] for p in answer["predictions"]]) if answer_form.labelled else None
    try:
        return answer_form.check(answer, known)
    except AssertionError as err:
        raise AssertionError(f"{url} for {workload_name}: {err}") from None


STOCK_SETUPS = ("A", "A2")


def stock_stall(row: dict) -> bool:
    """Stock TorchServe answered nothing within the point (its 2 OpenMP threads per worker collapse on
    a busy 2-core machine, in (B)'s 2-worker layout above all): a measurement of stock, reported."""
    return row["setup"] in STOCK_SETUPS and bool(row.get("stalled")) and not row.get("wrong")


def failed_rows(rows: List[dict], stock_stalls: bool = True) -> List[dict]:
    """Load points with a failed request (non-200, wrong answer, socket error, client exception), in the
    timed point or in its warm-up, or with no answer at all within the point; without `stock_stalls`,
    stock's stalls are left out (they fail no request of this package)."""
    return [r for r in rows if (r.get("errors") or r.get("warmup_errors")) and (stock_stalls or not stock_stall(r))]


def check_table(rows: List[dict]) -> str:
    """Per load point: what was checked, how many answers, how many wrong, errors, the first failure.
    In-process rows (C, J) have no served answers to check and are listed as such."""
    lines = ["| setup | model | input | conc | check | answers checked | wrong | failed requests | first failure |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        how = r.get("concurrency") or "in process"
        if r.get("round"):
            how = f"{how} (round {r['round']})"
        served = r["setup"] not in ("C", "J")
        first = (r.get("first_error") or "").replace("|", "/").replace("\n", " ")[:120]
        lines.append(f"| {r['setup']} | {r['model']} | {r['workload']} | {how} "
                     f"| {r.get('check', '') if served else 'none: no served answer'} "
                     f"| {r.get('checked', '') if served else ''} | {r.get('wrong', '') if served else ''} "
                     f"| {r.get('errors', 0)}" + (f" (+{r['warmup_errors']} in warm-up)" if r.get("warmup_errors") else "")
                     + f" | {first} |")
    failed = failed_rows(rows, stock_stalls=False)
    stalls = [r for r in rows if stock_stall(r)]
    checked = sum(r.get("checked", 0) or 0 for r in rows)
    lines.append("")
    lines.append(f"answer checks: {checked} answers checked over "
                 f"{sum(1 for r in rows if r['setup'] not in ('C', 'J'))} load points; "
                 + (f"{len(failed)} load points with failures: "
                    + "; ".join(f"{r['setup']} {r['model']} c={r.get('concurrency')}: "
                                f"{r.get('errors', 0) + r.get('warmup_errors', 0)}" for r in failed)
                    if failed else "no failure")
                 + ("; stock answered nothing within the point (reported, not a failure of this package): "
                    + ", ".join(f"{r['setup']} c={r.get('concurrency')}" for r in stalls) if stalls else ""))
    return "\n".join(lines)
