"""Settings come from flags, then EMBEDSERVE_* variables, then bare TEI-style variables, then defaults; bad values
and combinations fail with a message naming the flag."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from embedserve.cli import build_parser, parse_settings
from embedserve.options import field_docs
from embedserve.settings import CacheSettings, EdgeSettings, ModelSettings, ServerSettings, Settings, SettingsError

pytestmark = pytest.mark.unit


def test_defaults_match_tei_where_tei_has_a_setting():
    settings = parse_settings([], {})
    model, server = settings.models[0], settings.server
    assert model.model_id == "sentence-transformers/all-MiniLM-L6-v2"
    assert (model.max_concurrent_requests, model.max_batch_tokens, model.max_client_batch_size) == (512, 16384, 32)
    assert model.max_batch_requests is None
    assert model.auto_truncate is True
    assert (server.port, server.payload_limit, server.hostname) == (3000, 2_000_000, "127.0.0.1")


def test_flags_beat_embedserve_variables_which_beat_tei_variables():
    env = {"EMBEDSERVE_MAX_BATCH_TOKENS": "2048", "MAX_BATCH_TOKENS": "1024", "PORT": "8080", "MODEL_ID": "/m"}
    settings = parse_settings(["--port", "9000"], env)
    assert settings.models[0].max_batch_tokens == 2048
    assert settings.models[0].model_id == "/m"
    assert settings.server.port == 9000


def test_boolean_flags_and_variables():
    assert parse_settings(["--no-auto-truncate"], {}).models[0].auto_truncate is False
    assert parse_settings([], {"AUTO_TRUNCATE": "false"}).models[0].auto_truncate is False
    assert parse_settings([], {"JSON_OUTPUT": "1"}).server.json_output is True
    with pytest.raises(SettingsError, match="JSON_OUTPUT"):
        parse_settings([], {"JSON_OUTPUT": "maybe"})


def test_the_shell_hostname_variable_is_not_taken_as_the_bind_address():
    assert parse_settings([], {"HOSTNAME": "buildbox-7"}).server.hostname == "127.0.0.1"
    assert parse_settings([], {"EMBEDSERVE_HOSTNAME": "0.0.0.0"}).server.hostname == "0.0.0.0"


def test_choices_are_enforced_for_flags_and_variables(capsys):
    with pytest.raises(SystemExit):
        parse_settings(["--dtype", "float8"], {})
    assert "--dtype" in capsys.readouterr().err
    with pytest.raises(SettingsError, match="POOLING"):
        parse_settings([], {"POOLING": "max"})


@pytest.mark.parametrize(
    ("model", "flag"),
    [
        ({"max_client_batch_size": 64, "max_concurrent_requests": 16}, "--max-client-batch-size"),
        ({"max_batch_tokens": 0}, "--max-batch-tokens"),
        ({"max_batch_requests": 0}, "--max-batch-requests"),
        ({"tokenization_workers": 0}, "--tokenization-workers"),
        ({"device": "tpu"}, "--device"),
        ({"default_prompt_name": "query", "default_prompt": "q: "}, "--default-prompt"),
        ({"model_id": " "}, "--model-id"),
        ({"intra_op_threads": 0}, "--intra-op-threads"),
        ({"engine": "onnx", "device": "cuda"}, "--engine onnx runs on the CPU"),
        ({"engine": "openvino", "device": "cuda:1"}, "--engine openvino runs on the CPU"),
        ({"engine": "onnx", "dtype": "bfloat16"}, "--engine onnx runs float32"),
        ({"quantize": "int8", "engine": "openvino"}, "--quantize int8 runs on ONNX Runtime"),
        ({"quantize": "int8", "device": "cuda"}, "--quantize int8 runs on the CPU"),
        ({"quantize": "int8", "dtype": "bfloat16"}, "--quantize int8 replaces --dtype"),
        ({"quantize": "int8", "kind": "rerank"}, "--quantize int8 serves embedding and sparse"),
        ({"dtype": "float16", "device": "cpu"}, "--dtype float16 is for CUDA"),
    ],
)
def test_bad_model_settings_name_the_flag_to_change(model, flag):
    with pytest.raises(SettingsError, match=flag):
        Settings(models=(ModelSettings(**model),)).check()


def test_bad_server_settings_name_the_flag_to_change():
    with pytest.raises(SettingsError, match="--port"):
        Settings(server=ServerSettings(port=70000)).check()
    with pytest.raises(SettingsError, match="--payload-limit"):
        Settings(server=ServerSettings(payload_limit=0)).check()


def test_two_models_with_one_served_name_are_refused():
    twins = (ModelSettings(model_id="/a", served_model_name="x"), ModelSettings(model_id="/b", served_model_name="x"))
    with pytest.raises(SettingsError, match="served-model-name"):
        Settings(models=twins).check()


def test_every_settings_field_has_a_flag_with_help_and_env_names():
    help_text = build_parser().format_help()
    for cls in (ModelSettings, ServerSettings, CacheSettings):
        for f in fields(cls):
            if not f.metadata.get("cli", True):
                continue  # set in a --config file only
            flag = "--" + f.name.replace("_", "-")
            assert flag in help_text
            assert f"EMBEDSERVE_{f.name.upper()}" in help_text
            assert len(f.metadata["help"]) > 30, f"{flag} needs tuning advice in its help"


def test_the_readme_documents_every_flag_and_its_environment_variable():
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    for cls in (ModelSettings, ServerSettings, EdgeSettings, CacheSettings):
        for flag, _, envs, _ in field_docs(cls):
            assert f"`{flag}`" in readme, flag
            assert f"`{envs[0]}`" in readme, envs[0]


def test_cache_flags_and_environment_reach_the_cache_settings():
    settings = parse_settings(
        ["--cache-bytes", "1048576", "--cache-url", "redis://cache:6379/0"], {"EMBEDSERVE_CACHE_TTL": "60"}
    )
    assert settings.cache == CacheSettings(cache_bytes=2**20, cache_url="redis://cache:6379/0", cache_ttl=60.0)
    assert "redis://" not in repr(settings.cache)  # the URL may carry a password
    assert parse_settings([], {"CACHE_BYTES": "0"}).cache.cache_bytes == CacheSettings().cache_bytes  # no bare env


@pytest.mark.parametrize(
    ("cache", "flag"),
    [
        (CacheSettings(cache_bytes=-1), "--cache-bytes"),
        (CacheSettings(cache_ttl=0), "--cache-ttl"),
        (CacheSettings(cache_timeout=0), "--cache-timeout"),
        (CacheSettings(cache_url="http://cache:6379"), "--cache-url"),
    ],
)
def test_bad_cache_settings_are_refused_naming_the_flag(cache, flag):
    with pytest.raises(SettingsError, match=flag):
        Settings(cache=cache).check()
