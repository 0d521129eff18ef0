"""The order of `make bench`'s served load points: (A) and (B) interleaved per input and point.

For each model and input, each concurrency is one step: stock TorchServe in the README recipe's layout
(A), the same stock archive in (B)'s worker layout (A2), and (B), back to back, so that the machine's
drift (2x between spells here) hits all three alike. The order within a step alternates (A, A2, B then
B, A2, A) so that neither side always runs first, on a warmer or a cooler machine. The pipeline without
the model (P) follows at the top concurrency; (C) is measured right after each group by the caller.
"""

from dataclasses import dataclass, field
from typing import Dict, List

STOCK_PREFIX = "stock_"
STOCK_LAYOUT_SUFFIX = "_in_b_layout"  # (A2): the stock archive registered with (B)'s workers and batching
PIPELINE_SUFFIX = "_without_model"


@dataclass(frozen=True)
class Point:
    setup: str        # "A", "A2", "B" or "P"
    model: str        # the registered model the load goes to
    workload: str
    concurrency: int


@dataclass
class Group:
    """Every served point of one (B) model on one input, in the order they run."""

    base: str
    workload: str
    points: List[Point] = field(default_factory=list)


def stock_name(model: str) -> str:
    return STOCK_PREFIX + model


def stock_b_layout_name(model: str) -> str:
    return STOCK_PREFIX + model + STOCK_LAYOUT_SUFFIX


def pipeline_name(model: str) -> str:
    return model + PIPELINE_SUFFIX


def base_of(model: str) -> str:
    """The (B) model a served name stands beside."""
    return model.removeprefix(STOCK_PREFIX).removesuffix(STOCK_LAYOUT_SUFFIX).removesuffix(PIPELINE_SUFFIX)


def interleaved(models: List[str], inputs: Dict[str, str], kinds: Dict[str, str], concurrency: List[int],
                stock_for: List[str], pipeline_for: List[str]) -> List[Group]:
    """inputs: {input name: its kind ("vision"/"text")}; kinds: {model: its input kind}."""
    groups = []
    for model in models:
        for workload, input_kind in inputs.items():
            if input_kind != kinds[model]:
                continue
            group = Group(model, workload)
            for step, c in enumerate(concurrency):
                trio = [Point("B", model, workload, c)]
                if model in stock_for:
                    trio = [Point("A", stock_name(model), workload, c),
                            Point("A2", stock_b_layout_name(model), workload, c)] + trio
                group.points += trio if step % 2 == 0 else trio[::-1]
            if model in pipeline_for:
                group.points.append(Point("P", pipeline_name(model), workload, max(concurrency)))
            groups.append(group)
    return groups
