"""Admission's arithmetic: measured speed, predicted wait, Retry-After, deadlines, and the queue's token count."""

from __future__ import annotations

import asyncio
import time

import pytest

from embedserve.core.admission import CALIBRATION_BOUNDS, Admission, Throughput, WaitCalibration
from embedserve.core.batching import MIN_PACK_WINDOW, BatchQueue, Job
from embedserve.core.priority import Priority
from embedserve.errors import DeadlineExceededError, OverloadedError


def test_throughput_starts_from_the_start_up_figure_and_follows_measured_batches():
    speed = Throughput(10_000.0)
    assert speed.tokens_per_second == pytest.approx(10_000.0)
    for _ in range(400):  # 40 busy seconds at 1,000 tokens/s: the seed weighs e^-8 of them
        speed.observe(100, 0.1)
    assert speed.tokens_per_second == pytest.approx(1_000.0, rel=0.01)


def test_throughput_without_a_start_up_figure_is_unknown_until_a_batch_is_measured():
    speed = Throughput(None)
    assert speed.tokens_per_second is None
    speed.observe(500, 0.25)
    assert speed.tokens_per_second == pytest.approx(2_000.0)


def test_a_predicted_wait_over_the_limit_is_refused_with_retry_after_the_excess_drain_time():
    admission = Admission(512, max_queue_time=1.0, throughput=Throughput(1_000.0))
    admission.admit(1, 10.0, tokens_ahead=900.0, deadline_in=None, name="m")  # 0.9 s ahead: admitted
    with pytest.raises(OverloadedError) as refused:
        admission.admit(1, 10.0, tokens_ahead=3_500.0, deadline_in=None, name="m")  # 3.5 s + 0.01 s tokenizing
    assert refused.value.headers["Retry-After"] == "3"  # ceil(3.51 - 1.0)
    assert refused.value.headers["Retry-After-Ms"] == "2510"  # what the OpenAI SDKs wait, when present
    assert "predicted wait of 3.51 s" in refused.value.message
    assert admission.in_use == 1


def test_max_queue_time_0_turns_the_prediction_off_and_leaves_the_slots():
    admission = Admission(2, max_queue_time=0.0, throughput=Throughput(1.0))
    admission.admit(2, 5.0, tokens_ahead=1e9, deadline_in=None, name="m")
    with pytest.raises(OverloadedError) as refused:
        admission.admit(1, 5.0, tokens_ahead=0.0, deadline_in=None, name="m")
    assert "input slots are taken" in refused.value.message
    assert refused.value.headers["Retry-After"] == "1"
    assert refused.value.headers["Retry-After-Ms"] == "1000"


def test_the_calibration_is_the_99th_percentile_of_actual_over_predicted_waits():
    calibration = WaitCalibration()
    assert calibration.factor == 1.0
    for k in range(192):  # ratios 1.000 .. 1.382: the 99th percentile is about 1.38
        calibration.observe(0.5, 0.5 * (1 + k * 0.002), limit=1.0)
    assert calibration.factor == pytest.approx(1.38, abs=0.004)  # recomputed every 16 requests
    calibration.observe(0.01, 5.0, limit=0.01)  # too short a prediction to compare: ignored
    calibration.observe(0.3, 5.0, limit=1.0)  # under half the limit: not the waits admission decides on
    assert calibration.factor == pytest.approx(1.38, abs=0.004)
    for _ in range(256):  # the tail moves with what happens now, within bounds
        calibration.observe(0.6, 100.0, limit=1.0)
    assert calibration.factor == CALIBRATION_BOUNDS[1]


def test_the_calibration_keeps_learning_after_its_factor_passed_two():
    calibration = WaitCalibration()
    for _ in range(256):  # a burst: waits three times their prediction
        calibration.observe(0.6, 1.8, limit=1.0)
    assert calibration.factor == pytest.approx(3.0)
    # Admission now lets in raw predictions up to 1 / 3 s only; they are still the waits it decides on.
    for _ in range(512):  # the burst is over: waits are as predicted
        calibration.observe(0.3, 0.33, limit=1.0)
    assert calibration.factor == pytest.approx(1.1)
    calibration.observe(0.3, 30.0, limit=1.0)  # 0.3 x 1.1 is under half the limit now: ignored
    assert calibration.factor == pytest.approx(1.1)


def test_admission_scales_each_lanes_prediction_by_its_calibration_and_returns_the_raw_figure():
    admission = Admission(512, max_queue_time=1.0, throughput=Throughput(1_000.0))
    raw = admission.admit(1, 1.0, tokens_ahead=800.0, deadline_in=None, name="m")
    assert raw == pytest.approx(0.8)
    for _ in range(32):  # normal requests have been waiting 1.5 times their prediction
        admission.waited(Priority.NORMAL, 0.6, 0.9)
    assert admission.predicted_wait(800.0) == pytest.approx(1.2)
    with pytest.raises(OverloadedError) as refused:
        admission.admit(1, 1.0, tokens_ahead=800.0, deadline_in=None, name="m")  # (0.8 + 0.001) x 1.5: over 1 s
    assert "predicted wait of 1.20 s" in refused.value.message
    admission.admit(1, 1.0, tokens_ahead=800.0, deadline_in=None, name="m", priority=Priority.HIGH)  # its own


def test_a_deadline_shorter_than_the_predicted_wait_is_refused_with_504():
    admission = Admission(512, max_queue_time=10.0, throughput=Throughput(1_000.0))
    with pytest.raises(DeadlineExceededError):
        admission.admit(1, 1.0, tokens_ahead=500.0, deadline_in=0.2, name="m")
    admission.admit(1, 1.0, tokens_ahead=500.0, deadline_in=0.6, name="m")
    assert admission.in_use == 1


def test_tokens_being_tokenized_count_as_ahead_until_the_request_reaches_the_queue():
    admission = Admission(512, max_queue_time=1.0, throughput=Throughput(1_000.0))
    estimate = admission.estimate([4_000] * 4, max_input_tokens=256)
    assert estimate == 4 * 256  # each input capped at the model's input limit
    admission.admit(4, estimate, tokens_ahead=0.0, deadline_in=None, name="m")
    assert admission.predicted_wait(admission.tokenizing_tokens) == pytest.approx(1.024)
    with pytest.raises(OverloadedError):
        admission.admit(1, 5.0, tokens_ahead=0.0, deadline_in=None, name="m")
    admission.tokenized(estimate)
    admission.admit(1, 5.0, tokens_ahead=0.0, deadline_in=None, name="m")


def test_the_token_estimate_learns_the_tokenizers_tokens_per_character():
    admission = Admission(512, max_queue_time=1.0)
    before = admission.estimate([1_000], max_input_tokens=100_000)
    for _ in range(100):
        admission.learn(1_000, 500)
    assert before < 400
    assert admission.estimate([1_000], max_input_tokens=100_000) == pytest.approx(502, abs=3)


def test_the_queue_counts_real_tokens_queued_and_running_and_drops_expired_jobs_unrun():
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        queue = BatchQueue(loop, max_batch_tokens=1_000, max_batch_requests=1)
        kept = Job(loop, 2)
        queue.put(kept, [[1] * 10, [1] * 30])
        expired = Job(loop, 1, deadline=time.perf_counter() - 0.001)
        queue.put(expired, [[1] * 50])
        assert queue.tokens_ahead == 90
        batch = queue.take(block=False)
        assert batch is not None
        assert [entry.job for entry in batch.entries] == [kept]
        assert queue.tokens_ahead == 40  # the expired job's 50 tokens left with it
        queue.done(batch)
        assert queue.tokens_ahead == 30
        with pytest.raises(DeadlineExceededError):
            await expired.future
        gone = Job(loop, 1)
        queue.put(gone, [[1] * 7])
        queue.discard(gone)
        assert queue.tokens_ahead == 30

    asyncio.run(scenario())


def test_a_younger_input_cannot_jump_past_the_packing_window():
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        queue = BatchQueue(loop, max_batch_tokens=10_000, max_batch_requests=None, overhead_tokens=0.0)
        jobs = [Job(loop, 1) for _ in range(100)]
        for i, job in enumerate(jobs):
            # The oldest input is 50 tokens; the others alternate far from it, except one young twin at 80.
            queue.put(job, [[1] * (50 if i in (0, 80) else 10 + (i % 2) * 200)])
        first = queue.take(block=False)
        assert first is not None
        picked = {jobs.index(entry.job) for entry in first.entries}
        assert 0 in picked
        assert 80 not in picked, "the young twin rode ahead of the whole window"
        assert max(picked) < MIN_PACK_WINDOW

    asyncio.run(scenario())
