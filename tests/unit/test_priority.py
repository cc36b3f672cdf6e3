"""Priority lanes in the core: the lane each batch comes from (higher first, no lane starved past the bound), the
queue's per-lane work ahead, and admission's per-lane limits."""

from __future__ import annotations

import asyncio
import random

import pytest

from embedserve.core.admission import Admission, Throughput
from embedserve.core.batching import BatchQueue, Job
from embedserve.core.priority import (
    ACTIVE_WINDOW_S,
    LANES,
    MAX_PASSES,
    STARVATION_BOUND,
    LaneChooser,
    LaneLimits,
    Priority,
    YieldBudget,
)
from embedserve.errors import OverloadedError

pytestmark = pytest.mark.unit

HIGH, NORMAL, LOW = Priority.HIGH, Priority.NORMAL, Priority.LOW


def test_a_flood_of_every_lane_is_served_high_high_normal_low_over_and_over():
    chooser = LaneChooser()
    served = [chooser.choose(LANES) for _ in range(13)]
    assert served[:5] == [HIGH, HIGH, HIGH, NORMAL, LOW]
    assert served[5:] == [HIGH, HIGH, NORMAL, LOW] * 2


def test_a_waiting_low_lane_gets_one_batch_in_four_under_a_high_flood():
    chooser = LaneChooser()
    served = [chooser.choose((HIGH, LOW)) for _ in range(12)]
    assert served == [HIGH, HIGH, HIGH, LOW] * 3


def test_with_nothing_else_waiting_a_lower_lane_runs_at_once():
    chooser = LaneChooser()
    assert chooser.choose((LOW,)) is LOW
    assert chooser.choose((NORMAL, LOW)) is NORMAL


def test_no_waiting_lane_is_passed_over_for_more_than_the_starvation_bound_whatever_arrives():
    rng = random.Random(13)
    chooser = LaneChooser()
    waiting: set[Priority] = set()
    passed = dict.fromkeys(LANES, 0)
    worst = 0
    for _ in range(20_000):
        waiting |= {lane for lane in LANES if rng.random() < 0.6}
        if not waiting:
            continue
        lane = chooser.choose(waiting)
        for other in waiting - {lane}:
            passed[other] += 1
            worst = max(worst, passed[other])
        passed[lane] = 0
        if rng.random() < 0.5:  # the batch took the lane's last inputs
            waiting.discard(lane)
    assert STARVATION_BOUND == 4
    assert worst == STARVATION_BOUND  # reached, never passed


def _queue_scenario(scenario):  # type: ignore[no-untyped-def]
    loop = asyncio.new_event_loop()
    try:
        queue = BatchQueue(loop, max_batch_tokens=10_000, max_batch_requests=2, overhead_tokens=0.0)
        scenario(loop, queue)
    finally:
        loop.close()


def test_inputs_queued_high_after_low_are_taken_first_and_a_batch_holds_one_lane():
    def scenario(loop: asyncio.AbstractEventLoop, queue: BatchQueue) -> None:
        low = Job(loop, 2, priority=LOW)
        queue.put(low, [[1] * 5, [1] * 5])
        high = Job(loop, 3, priority=HIGH)
        queue.put(high, [[1] * 5, [1] * 5, [1] * 5])
        order = []
        while (batch := queue.take(block=False)) is not None:
            order.append([(entry.job.priority, entry.index) for entry in batch.entries])
        assert order == [[(HIGH, 0), (HIGH, 1)], [(HIGH, 2)], [(LOW, 0), (LOW, 1)]]

    _queue_scenario(scenario)


def test_a_queued_low_input_runs_within_the_bound_while_high_work_keeps_arriving():
    def scenario(loop: asyncio.AbstractEventLoop, queue: BatchQueue) -> None:
        low = Job(loop, 1, priority=LOW)
        queue.put(low, [[1] * 5])
        taken = []
        while not taken or taken[-1] is not LOW:
            queue.put(Job(loop, 2, priority=HIGH), [[1] * 5, [1] * 5])  # always a full batch of high work waiting
            batch = queue.take(block=False)
            assert batch is not None
            taken.append(batch.entries[0].job.priority)
            assert len(taken) <= STARVATION_BOUND + 1
        assert taken == [HIGH] * MAX_PASSES + [LOW]

    _queue_scenario(scenario)


def test_a_lower_lane_gets_a_budget_of_the_in_use_higher_lanes_batch_time_in_tokens():
    budget = YieldBudget()
    assert budget.tokens(LOW, 0.0) is None  # nothing measured, no higher lane in use
    budget.queued(HIGH, 10.0)
    assert budget.tokens(LOW, 10.0) is None  # in use, but no batch timed yet
    budget.computed(HIGH, 0.004, 40)  # 4 ms for 40 padded tokens: 0.1 ms per token
    assert budget.tokens(LOW, 10.0) == 40
    assert budget.tokens(NORMAL, 10.0) == 40
    assert budget.tokens(HIGH, 10.0) is None  # nothing is above the top lane
    assert budget.tokens(LOW, 10.0 + ACTIVE_WINDOW_S) is None  # high went quiet: full batches again
    budget.queued(NORMAL, 10.5)
    budget.computed(NORMAL, 0.050, 500)
    assert budget.tokens(LOW, 10.6) == pytest.approx(40, abs=1)  # the shortest in-use higher lane's batches
    assert budget.tokens(LOW, 10.0 + ACTIVE_WINDOW_S) == pytest.approx(500, rel=0.2)  # only normal in use now
    budget.computed(LOW, 0.001, 0)  # an empty batch cannot divide by zero
    assert budget.tokens(LOW, 10.6) is not None


def test_while_high_is_in_use_a_low_batch_is_cut_to_the_time_of_a_high_batch():
    def scenario(loop: asyncio.AbstractEventLoop, queue: BatchQueue) -> None:
        queue.put(Job(loop, 1, priority=HIGH), [[1] * 10])
        high = queue.take(block=False)
        assert high is not None
        high.t_start, high.t_end = 1.0, 1.001  # 1 ms for 10 tokens
        queue.done(high)
        queue.put(Job(loop, 8, priority=LOW), [[1] * 5] * 8)
        queue.put(Job(loop, 1, priority=LOW), [[1] * 50])
        sizes = []
        while (batch := queue.take(block=False)) is not None:
            sizes.append(len(batch.entries))
        # 10 padded tokens each, what one high batch took; the 50-token input, over the budget alone, still runs
        assert sizes == [2, 2, 2, 2, 1]

    def unhurried(loop: asyncio.AbstractEventLoop, queue: BatchQueue) -> None:
        queue.put(Job(loop, 8, priority=LOW), [[1] * 5] * 8)
        batch = queue.take(block=False)
        assert batch is not None
        assert len(batch.entries) == 8  # no high lane in use: one full batch

    def not_yielding(loop: asyncio.AbstractEventLoop, queue: BatchQueue) -> None:
        queue.put(Job(loop, 1, priority=HIGH), [[1] * 10])
        high = queue.take(block=False)
        assert high is not None
        high.t_start, high.t_end = 1.0, 1.001
        queue.done(high)
        queue.put(Job(loop, 8, priority=LOW), [[1] * 5] * 8)
        batch = queue.take(block=False)
        assert batch is not None
        assert len(batch.entries) == 8  # --no-lane-yield: full batches whatever the higher lanes do

    loop = asyncio.new_event_loop()
    try:
        scenario(loop, BatchQueue(loop, max_batch_tokens=10_000, max_batch_requests=None))
        unhurried(loop, BatchQueue(loop, max_batch_tokens=10_000, max_batch_requests=None))
        not_yielding(loop, BatchQueue(loop, max_batch_tokens=10_000, max_batch_requests=None, lane_yield=False))
    finally:
        loop.close()


def test_the_work_ahead_of_a_lane_is_its_own_and_higher_lanes_queues_plus_the_running_batch():
    def scenario(loop: asyncio.AbstractEventLoop, queue: BatchQueue) -> None:
        queue.put(Job(loop, 1, priority=LOW), [[1] * 100])
        queue.put(Job(loop, 1, priority=NORMAL), [[1] * 20])
        queue.put(Job(loop, 1, priority=HIGH), [[1] * 3])
        assert [queue.tokens_ahead_of(lane) for lane in LANES] == [3, 23, 123]
        batch = queue.take(block=False)  # the high input, now running
        assert batch is not None
        assert [queue.tokens_ahead_of(lane) for lane in LANES] == [3, 23, 123]
        queue.done(batch)
        assert [queue.tokens_ahead_of(lane) for lane in LANES] == [0, 20, 120]
        assert [queue.queued(lane) for lane in LANES] == [0, 1, 1]

    _queue_scenario(scenario)


def test_lane_limits_keep_the_reserve_for_high_and_give_low_its_share():
    limits = LaneLimits(512, 1.0, reserve=0.1, low_share=0.5)
    assert [limits.slots(lane) for lane in LANES] == [512, 461, 256]
    assert [limits.wait(lane) for lane in LANES] == [1.0, 1.0, 0.5]
    tiny = LaneLimits(1, 1.0, reserve=0.5, low_share=0.1)
    assert [tiny.slots(lane) for lane in LANES] == [1, 1, 1]  # every lane can always run one input


def test_low_is_refused_past_its_share_of_the_slots_while_high_still_gets_the_reserved_ones():
    admission = Admission(10, max_queue_time=0.0, reserve=0.2, low_share=0.5)
    admission.admit(5, 1.0, 0.0, deadline_in=None, name="m", priority=LOW)
    with pytest.raises(OverloadedError, match="low priority may use 5"):
        admission.admit(1, 1.0, 0.0, deadline_in=None, name="m", priority=LOW)
    admission.admit(3, 1.0, 0.0, deadline_in=None, name="m", priority=NORMAL)
    with pytest.raises(OverloadedError, match="normal priority may use 8"):
        admission.admit(1, 1.0, 0.0, deadline_in=None, name="m", priority=NORMAL)
    admission.admit(2, 1.0, 0.0, deadline_in=None, name="m", priority=HIGH)
    with pytest.raises(OverloadedError, match="all 10 input slots are taken"):
        admission.admit(1, 1.0, 0.0, deadline_in=None, name="m", priority=HIGH)


def test_low_is_refused_at_its_share_of_the_queue_time_and_a_lane_ignores_lower_lanes_still_tokenizing():
    admission = Admission(512, max_queue_time=1.0, throughput=Throughput(1_000.0), low_share=0.5)
    admission.admit(1, 400.0, 0.0, deadline_in=None, name="m", priority=LOW)  # 0.4 s of low work being tokenized
    with pytest.raises(OverloadedError, match=r"0\.60 s is over the 0\.5 s limit \(low priority's share"):
        admission.admit(1, 1.0, 200.0, deadline_in=None, name="m", priority=LOW)
    admission.admit(1, 100.0, 900.0, deadline_in=None, name="m", priority=NORMAL)  # 0.9 s; low's 0.4 s not ahead
    with pytest.raises(OverloadedError, match=r"1\.05 s is over the 1 s limit \(--max-queue-time\)"):
        admission.admit(1, 1.0, 950.0, deadline_in=None, name="m", priority=NORMAL)  # + 0.1 s of normal tokenizing
    admission.admit(1, 1.0, 950.0, deadline_in=None, name="m", priority=HIGH)  # normal's tokenizing is behind it
    admission.shed(990.0, "m", HIGH)
    with pytest.raises(OverloadedError):
        admission.shed(990.0, "m", NORMAL)


def test_a_request_alone_or_ahead_of_everything_being_tokenized_is_tokenized_inline_and_others_use_the_pool():
    admission = Admission(512, max_queue_time=0.0)
    admission.admit(1, 10.0, 0.0, deadline_in=None, name="m", priority=LOW)
    assert admission.may_tokenize_inline(1, LOW)  # alone in flight
    admission.admit(32, 3000.0, 0.0, deadline_in=None, name="m", priority=LOW)
    assert not admission.may_tokenize_inline(32, LOW)  # the lowest lane never jumps the pool's queue
    admission.admit(1, 10.0, 0.0, deadline_in=None, name="m", priority=HIGH)
    assert admission.may_tokenize_inline(1, HIGH)  # only lower lanes are tokenizing: it would wait behind them
    admission.admit(1, 10.0, 0.0, deadline_in=None, name="m", priority=NORMAL)
    assert not admission.may_tokenize_inline(1, NORMAL)  # the high request is being tokenized ahead of it
    admission.tokenized(10.0, HIGH)
    assert admission.may_tokenize_inline(1, NORMAL)
    admission.admit(1, 10.0, 0.0, deadline_in=None, name="m", priority=NORMAL)
    assert not admission.may_tokenize_inline(1, NORMAL)  # two of its own lane: they share the pool in order
    for lane in (LOW, LOW, NORMAL):
        admission.tokenized(10.0, lane)
    assert not admission.may_tokenize_inline(1, NORMAL)  # nothing lower being tokenized: one lane keeps the pool
    admission.tokenized(10.0, NORMAL)
    admission.release(36)
    assert admission.tokenizing_requests == dict.fromkeys(LANES, 0)


def test_the_express_lane_takes_only_high_inputs_and_only_while_a_main_batch_computes():
    loop = asyncio.new_event_loop()
    try:
        queue = BatchQueue(loop, max_batch_tokens=10_000, max_batch_requests=None)
        queue.put(Job(loop, 1, priority=HIGH), [[1] * 5])
        assert queue.take(block=False, express=True) is None  # the main thread is idle: it takes high work itself
        queue.put(Job(loop, 1, priority=LOW), [[1] * 5])
        main = queue.take(block=False)
        assert main is not None
        assert main.entries[0].job.priority is HIGH
        assert not main.express
        assert queue.take(block=False, express=True) is None  # only low work is left
        queue.put(Job(loop, 2, priority=HIGH), [[1] * 5, [1] * 5])
        express = queue.take(block=False, express=True)
        assert express is not None
        assert express.express
        assert {entry.job.priority for entry in express.entries} == {HIGH}
        assert len(express.entries) == 2
        queue.done(express)
        queue.done(main)
        queue.put(Job(loop, 1, priority=HIGH), [[1] * 5])
        assert queue.take(block=False, express=True) is None  # the main batch finished: idle again
        assert queue.tokens_ahead == 10  # the low input and the last high one
    finally:
        loop.close()


def test_once_the_queue_stops_yielding_a_low_batch_is_full_while_high_is_in_use():
    loop = asyncio.new_event_loop()
    try:
        queue = BatchQueue(loop, max_batch_tokens=10_000, max_batch_requests=None, overhead_tokens=5000.0)
        for lane, n in ((HIGH, 1), (LOW, 8)):
            queue.put(Job(loop, n, priority=lane), [[1] * 40] * n)
        for _ in range(2):
            batch = queue.take(block=False)
            assert batch is not None
            queue.done(batch)  # the high one first; times of both are now known to the budget
        for lane, n in ((HIGH, 1), (LOW, 8)):
            queue.put(Job(loop, n, priority=lane), [[1] * 40] * n)
        queue.stop_yielding()
        high = queue.take(block=False)
        low = queue.take(block=False)
        assert high is not None
        assert low is not None
        assert len(low.entries) == 8
    finally:
        loop.close()
