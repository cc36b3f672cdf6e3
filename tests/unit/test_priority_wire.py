"""Priority on the wire: the values a header or body field may carry, the key file's default lane, the lane the
connection layer sheds by, and the field in every queued body's schema."""

from __future__ import annotations

import pytest

from embedserve.core.priority import Priority
from embedserve.errors import ValidationError
from embedserve.http.fields import Served
from embedserve.http.inference_api import parse_similarity
from embedserve.http.keys import ApiKeys, key_id
from embedserve.http.priority import body_priority, parse_priority
from embedserve.http.schemas import parse_openai_embeddings, parse_sparse, parse_tei_embed, parse_tokenize
from embedserve.http.scoring_schemas import parse_cohere_rerank, parse_predict, parse_tei_rerank
from embedserve.http.shedding import _lane
from embedserve.settings import EdgeSettings, SettingsError

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("value", "lane"),
    [("high", Priority.HIGH), (" Low ", Priority.LOW), ("NORMAL", Priority.NORMAL), (-3, Priority.HIGH),
     (0, Priority.NORMAL), (7, Priority.LOW), (2.0, Priority.LOW), ("-1", Priority.HIGH), ("+2", Priority.LOW)],
)  # fmt: skip
def test_a_lane_is_a_name_in_any_case_or_a_vllm_style_integer(value, lane):
    assert parse_priority(value, "`priority`", "priority") is lane


@pytest.mark.parametrize("value", ["urgent", "", True, 1.5, [], {"lane": "high"}, "1e3"])
def test_anything_else_is_a_validation_error_naming_where_it_came_from(value):
    with pytest.raises(ValidationError) as refused:
        parse_priority(value, "header X-Priority", "x-priority")
    assert refused.value.param == "x-priority"
    assert refused.value.message.startswith("header X-Priority must be one of 'high', 'normal', 'low'")


@pytest.mark.parametrize("value", ["HIGH", " low", "0", "-1"])
def test_a_body_takes_only_what_its_schema_says_a_lower_case_name_or_a_json_integer(value):
    assert parse_priority(value, "header X-Priority", "x-priority") in set(Priority)  # a header reads them all
    with pytest.raises(ValidationError) as refused:
        body_priority({"priority": value})
    assert refused.value.param == "priority"
    assert body_priority({"priority": value.strip().lower()} if not value.strip().lstrip("-").isdigit()
                         else {"priority": int(value)}) in set(Priority)  # fmt: skip


def test_the_key_file_gives_a_key_a_default_lane_and_rejects_other_options(tmp_path):
    path = tmp_path / "keys"
    path.write_text("# keys\nplain-key\nbulk-key priority=LOW\n\nvip-key priority=high\n")
    keys = ApiKeys(EdgeSettings(api_key_file=str(path), api_key=("flag-key",)))
    assert keys.authenticate("Bearer bulk-key") == key_id("bulk-key")
    assert [keys.priority(key_id(k)) for k in ("plain-key", "bulk-key", "vip-key", "flag-key")] == [
        None, Priority.LOW, Priority.HIGH, None,
    ]  # fmt: skip
    path.write_text("good-key\nsecret-key lane=low\n")
    with pytest.raises(SettingsError, match="line 2: after the key, only priority=high") as refused:
        keys.reload()
    assert "secret-key" not in str(refused.value)
    assert keys.priority(key_id("vip-key")) is Priority.HIGH  # a bad file keeps the previous keys and lanes


def test_the_connection_layer_sheds_by_the_headers_lane_and_else_as_normal():
    assert _lane([(b"content-type", b"application/json"), (b"x-priority", b"high")]) is Priority.HIGH
    assert _lane([(b"x-priority", b"-1")]) is Priority.HIGH
    assert _lane([]) is Priority.NORMAL
    assert _lane([(b"x-priority", b"soon")]) is Priority.NORMAL  # the handler answers that with 422


def test_every_queued_body_documents_priority_and_the_tokenizer_bodies_do_not():
    for body in (parse_tei_embed, parse_openai_embeddings, parse_sparse, parse_similarity, parse_tei_rerank,
                 parse_cohere_rerank, parse_predict):  # fmt: skip
        schema = body.schema(Served())["properties"]["priority"]
        assert {"type": "string", "enum": ["high", "normal", "low"]} in schema["anyOf"][0]["anyOf"], body.name
    assert "priority" not in parse_tokenize.schema(Served())["properties"]
    assert parse_tei_embed({"inputs": "x", "priority": "low"}).inputs == ["x"]  # parsed (checked) but not kept
    with pytest.raises(ValidationError, match="`priority` must be one of"):
        parse_predict({"inputs": "x", "priority": "asap"})
