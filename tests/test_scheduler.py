"""The scheduling policy on its own (no model): packed prefill of every waiting request that
fits, decode of every occupied slot, and the shape plan a profiling run warms up."""
import dataclasses

from tpu_engine.buckets import Buckets
from tpu_engine.scheduler import Decode, Prefill, Scheduler, plan_shapes


@dataclasses.dataclass
class Req:
    name: str
    prompt: list


def _reqs(*lens):
    return [Req(f"r{i}", [0] * n) for i, n in enumerate(lens)]


def test_prefill_packs_every_waiting_request_that_fits_in_arrival_order():
    s = Scheduler(max_num_seqs=4, max_prefill_tokens=100)
    s.waiting.extend(_reqs(30, 40, 20, 50, 5))
    step = s.next_step()
    assert isinstance(step, Prefill)
    # 30 + 40 + 20 = 90 fit; the 50-token prompt would make 140 > 100, so it and everything
    # after it wait (arrival order: the 5-token prompt does not jump the queue).
    assert [r.name for r in step.requests] == ["r0", "r1", "r2"] and step.slots == [0, 1, 2]
    assert [r.name for r in s.waiting] == ["r3", "r4"]


def test_prefill_takes_one_request_per_free_slot_and_queues_the_rest():
    s = Scheduler(max_num_seqs=2, max_prefill_tokens=1000)
    s.waiting.extend(_reqs(*[1] * 5))
    step = s.next_step()
    assert [r.name for r in step.requests] == ["r0", "r1"] and step.slots == [0, 1]
    for r, slot in zip(step.requests, step.slots):
        s.slots[slot] = r
    step = s.next_step()  # no free slot: the queue waits, the running pair decodes
    assert isinstance(step, Decode) and [r.name for r in step.requests] == ["r0", "r1"]
    s.slots[1] = None     # r1 finished
    step = s.next_step()
    assert isinstance(step, Prefill) and [r.name for r in step.requests] == ["r2"] and step.slots == [1]


def test_idle_scheduler_has_no_step():
    assert Scheduler(max_num_seqs=2, max_prefill_tokens=10).next_step() is None


def test_plan_shapes_replays_the_policy_on_lengths():
    b = Buckets(max_model_len=512, max_num_seqs=8, max_prefill=512)
    # 32 one-token prompts, 8 slots: four prefill steps of 8 prompts (16-token bucket), each
    # followed by decodes of 8 slots; positions 1..4 attend within the first 128-span bucket.
    plan = plan_shapes(b, 8, 512, [(1, 5)] * 32)
    assert plan.prefill == ((16, 8),)
    assert plan.decode == ((8, 128),)
    # One 500-token prompt, one token out: a prefill and nothing else.
    plan = plan_shapes(b, 8, 512, [(500, 1)])
    assert plan.prefill == ((512, 1),) and plan.decode == ()
    # run_to_completion-like lengths: the batch shrinks from the low slots up, so the highest
    # occupied slot (7) keeps the slot bucket at 8 throughout.
    plan = plan_shapes(b, 8, 512, [(16, n) for n in (1, 2, 2, 3, 3, 3, 4, 4)])
    assert plan.prefill == ((128, 8),)
    assert plan.decode == ((8, 128),)


def test_plan_covers_a_span_crossing():
    b = Buckets(max_model_len=512, max_num_seqs=2, max_prefill=512)
    plan = plan_shapes(b, 2, 512, [(120, 20), (10, 3)])
    assert plan.prefill == ((256, 2),)
    assert plan.decode == ((1, 128), (1, 256), (2, 128))
