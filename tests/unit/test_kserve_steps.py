"""The KServe engine's continuous batching (tskit.kserve_engine.StepBatcher) with a handler of the test's own, as
TorchServe's ContinuousBatching.java runs one: a call per step with every running request (its body not sent
again) and new ones joining; a reply marked more-to-come keeps its request; and a batcher stopped by a rollout
answers what it still holds instead of leaving it hanging."""

import asyncio

from ts.context import Context

from tskit.kserve_engine import StepBatcher
from tskit.kserve_rows import Row
from tskit.kserve_streams import Streamed


class Archive:
    model_name, batch_size, max_batch_delay_ms, job_queue_size = "counting", 4, 5, 8

    def context(self):
        return Context(self.model_name, "/nonexistent", {}, self.batch_size, None, "0.12.0")

    def cleanup(self) -> None:
        pass


class Counting:
    """Answers each request one line a call, `n` lines in all (its body's n; None: for ever), keeping its count
    across calls as a continuously batched handler keeps its state."""

    def __init__(self):
        self.left, self.calls = {}, []

    def handle(self, data, context):
        ids = [context.request_ids[i] for i in range(len(data))]
        self.calls.append(list(zip(ids, data)))
        lines, stops = [], {}
        for i, (request_id, row) in enumerate(zip(ids, data)):
            self.left.setdefault(request_id, row.get("n"))
            if self.left[request_id] is not None:
                self.left[request_id] -= 1
            lines.append(f"{self.left[request_id]}\n".encode())
            stops[i] = self.left[request_id] == 0
        context.stopping_criteria = {i: (lambda _, stop=stop: stop) for i, stop in stops.items()}
        return lines


async def ask(batcher, n):
    return await batcher.submit(Row({"n": n}), await batcher.admit(1.0))


async def lines_of(streamed: Streamed) -> list:
    lines = []
    while (chunk := await streamed.chunks.get()) is not None:
        lines.append(chunk.decode().strip())
    return lines


def test_requests_step_together_join_a_running_batch_and_leave_when_done():
    handler = Counting()

    async def scenario():
        batcher = StepBatcher([handler], Archive())
        first = await ask(batcher, 4)
        second = await ask(batcher, 2)  # joins while the first runs
        return await asyncio.gather(lines_of(first), lines_of(second))

    first, second = asyncio.run(scenario())
    assert (first, second) == (["3", "2", "1", "0"], ["1", "0"])
    joined = next(call for call in handler.calls if len(call) == 2)
    assert [row for _, row in joined] == [{}, {"n": 2}]  # the running one without its body, the new one with it
    first_id, second_id = (request_id for request_id, _ in joined)
    assert [sum(request_id == i for call in handler.calls for request_id, _ in call)
            for i in (first_id, second_id)] == [4, 2]  # in each call until its last line, then gone


def test_a_stopped_batcher_ends_its_streams_and_answers_what_it_queued():
    async def scenario():
        batcher = StepBatcher([Counting()], Archive())
        endless = await ask(batcher, None)
        await endless.chunks.get()
        await batcher.drained(0.05)  # never drains: the stream goes on
        queued = asyncio.ensure_future(batcher.submit(Row({"n": 1}), await batcher.admit(1.0)))
        batcher.tasks[0].cancel()  # nothing takes the queued one now
        await asyncio.sleep(0.01)
        batcher.stop()
        rest = await asyncio.wait_for(lines_of(endless), 5)
        return rest, await asyncio.wait_for(queued, 5)

    rest, refused = asyncio.run(scenario())
    assert all(line == "None" for line in rest)
    assert refused.status == 503 and b"replaced" in refused.body
