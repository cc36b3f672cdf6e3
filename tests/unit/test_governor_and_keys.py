"""Rate limits proven with an injected clock (no sleeps), bounded memory, and API-key checks."""

from __future__ import annotations

import tracemalloc

import pytest

from embedserve.errors import RateLimitedError, UnauthorizedError
from embedserve.http.governor import Governor
from embedserve.http.keys import ANONYMOUS, ApiKeys, key_id
from embedserve.settings import EdgeSettings, SettingsError

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def admitted(governor: Governor, identity: str = "k") -> bool:
    try:
        governor.admit(identity)
    except RateLimitedError:
        return False
    return True


def test_a_burst_is_allowed_then_exactly_the_rate():
    clock = Clock()
    governor = Governor(EdgeSettings(rate_limit_rps=10, rate_limit_burst=5), clock=clock)
    assert [admitted(governor) for _ in range(6)] == [True] * 5 + [False]
    clock.now += 0.1  # one token back at 10/s
    assert [admitted(governor), admitted(governor)] == [True, False]
    clock.now += 10.0  # refills to the burst, not beyond
    assert sum(admitted(governor) for _ in range(20)) == 5


def test_over_a_long_window_the_admitted_rate_equals_the_limit():
    clock = Clock()
    governor = Governor(EdgeSettings(rate_limit_rps=80, rate_limit_burst=50), clock=clock)
    passed = 0
    for _ in range(10_000):  # 1,000 requests per second for 10 s
        clock.now += 0.001
        passed += admitted(governor)
    assert passed == 50 + 80 * 10 - 1 or passed == 50 + 80 * 10


def test_retry_after_is_the_whole_seconds_until_a_token_is_back():
    clock = Clock()
    governor = Governor(EdgeSettings(rate_limit_rps=0.25, rate_limit_burst=1), clock=clock)
    governor.admit("k")
    with pytest.raises(RateLimitedError) as limited:
        governor.admit("k")
    assert limited.value.headers == {"Retry-After": "4", "Retry-After-Ms": "4000"}
    assert limited.value.error_type == "RateLimited"
    clock.now += 3.9
    assert not admitted(governor)
    clock.now += 0.1
    assert admitted(governor)


def test_identities_have_separate_buckets():
    clock = Clock()
    governor = Governor(EdgeSettings(rate_limit_rps=1, rate_limit_burst=1), clock=clock)
    assert admitted(governor, "a")
    assert not admitted(governor, "a")
    assert admitted(governor, "b")


def test_the_token_budget_is_charged_with_real_tokens_and_blocks_while_in_debt():
    clock = Clock()
    governor = Governor(EdgeSettings(rate_limit_rps=0, rate_limit_tpm=600), clock=clock)  # 10 tokens/s
    governor.admit("k")
    governor.charge_tokens("k", 500)
    governor.admit("k")  # 100 left: still allowed
    governor.charge_tokens("k", 400)  # 300 in debt
    with pytest.raises(RateLimitedError, match="token budget") as limited:
        governor.admit("k")
    assert limited.value.headers == {"Retry-After": "30", "Retry-After-Ms": "30000"}
    clock.now += 29.0
    assert not admitted(governor)
    clock.now += 1.5
    assert admitted(governor)


def test_rate_limiting_can_be_turned_off():
    governor = Governor(EdgeSettings(rate_limit_rps=0))
    assert all(admitted(governor) for _ in range(10_000))


def test_memory_stays_bounded_with_100000_distinct_identities():
    clock = Clock()
    governor = Governor(EdgeSettings(rate_limit_rps=1, rate_limit_burst=5), clock=clock, max_identities=1000)
    tracemalloc.start()
    for i in range(100_000):
        clock.now += 0.0001  # fast enough that no bucket refills: only the bound keeps memory down
        governor.admit(f"identity-{i}")
    current, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert governor.requests is not None
    assert len(governor.requests) <= 1000
    assert current < 2_000_000


def test_buckets_that_refilled_are_dropped():
    clock = Clock()
    governor = Governor(EdgeSettings(rate_limit_rps=100, rate_limit_burst=5), clock=clock)
    for i in range(50):
        governor.admit(f"client-{i}")
    clock.now += 1.0
    governor.admit("late")
    assert governor.requests is not None
    assert len(governor.requests) == 1


def test_keys_are_checked_and_reported_by_id_only():
    keys = ApiKeys(EdgeSettings(api_key=("s3cret", "other")))
    assert keys.enabled
    assert keys.authenticate("Bearer s3cret") == key_id("s3cret")
    assert keys.authenticate("bearer   other") == key_id("other")
    assert "s3cret" not in key_id("s3cret")
    for header in (None, "", "Bearer", "Basic s3cret", "Bearer s3cre", "Bearer s3cret2", "s3cret"):
        with pytest.raises(UnauthorizedError) as denied:
            keys.authenticate(header)
        assert denied.value.headers["WWW-Authenticate"].startswith("Bearer")


def test_without_keys_everyone_is_anonymous():
    keys = ApiKeys(EdgeSettings())
    assert not keys.enabled
    assert keys.authenticate(None) == ANONYMOUS


def test_the_key_file_is_read_and_reloaded(tmp_path):
    path = tmp_path / "keys.txt"
    path.write_text("# team A\nalpha\n\n  beta  \n")
    keys = ApiKeys(EdgeSettings(api_key_file=str(path)))
    assert keys.authenticate("Bearer beta") == key_id("beta")
    path.write_text("gamma\n")
    assert keys.reload() == 1
    assert keys.authenticate("Bearer gamma") == key_id("gamma")
    with pytest.raises(UnauthorizedError):
        keys.authenticate("Bearer alpha")


def test_an_empty_or_missing_key_file_fails_naming_the_flag(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    with pytest.raises(SettingsError, match="--api-key-file"):
        ApiKeys(EdgeSettings(api_key_file=str(empty)))
    with pytest.raises(SettingsError, match="--api-key-file"):
        ApiKeys(EdgeSettings(api_key_file=str(tmp_path / "absent")))


def test_settings_never_show_keys():
    settings = EdgeSettings(api_key=("s3cret",))
    assert "s3cret" not in repr(settings)
