"""Every output encoding of /embed and /v1/embeddings decodes to the float vectors within its documented error
(README, "Output encodings"): the sign bits exactly, int8/uint8 within half a step of [-1, 1] cut into 255, float16
within its rounding; the quantized forms byte for byte as sentence-transformers' quantize_embeddings makes them."""

from __future__ import annotations

import base64

import numpy as np
import pytest

pytestmark = pytest.mark.integration

TEXTS = ["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby.", "x"]
STEP = 2 / 255
"""int8 and uint8 cut the fixed range [-1, 1] into 255 steps."""
DTYPES = {"float": "<f4", "float16": "<f2", "int8": "i1", "uint8": "u1", "binary": "i1", "ubinary": "u1"}


def embed(server, path: str, **fields) -> list:
    key = "input" if path == "/v1/embeddings" else "inputs"
    with server.client() as client:
        response = client.post(path, json={key: TEXTS, **fields})
    assert response.status_code == 200, response.text
    body = response.json()
    return [item["embedding"] for item in body["data"]] if path == "/v1/embeddings" else body


def elements(server, path: str, dtype: str, **fields) -> np.ndarray:
    """The vectors in ``dtype`` as JSON lists, after checking that base64 carries the same elements."""
    listed = np.array(embed(server, path, output_dtype=dtype, **fields), dtype=DTYPES[dtype])
    encoded = embed(server, path, output_dtype=dtype, encoding_format="base64", **fields)
    decoded = np.stack([np.frombuffer(base64.b64decode(row), dtype=DTYPES[dtype]) for row in encoded])
    np.testing.assert_array_equal(decoded, listed)
    return listed


def floats(server, **fields) -> np.ndarray:
    return np.array(embed(server, "/embed", **fields), dtype=np.float32)


ROUTES = pytest.mark.parametrize("path", ["/embed", "/v1/embeddings"])


@ROUTES
@pytest.mark.parametrize("dtype", ["binary", "ubinary"])
def test_binary_forms_carry_the_sign_of_every_component_in_packed_bits(minilm_server, path, dtype):
    reference = floats(minilm_server)
    packed = elements(minilm_server, path, dtype)
    assert packed.shape == (len(TEXTS), 384 // 8)
    raw = packed.astype(np.int16) + (128 if dtype == "binary" else 0)  # binary: each byte minus 128
    bits = np.unpackbits(raw.astype(np.uint8), axis=-1)
    np.testing.assert_array_equal(bits.astype(bool), reference > 0)


def test_binary_of_a_size_not_divisible_by_eight_pads_the_last_byte_with_zero_bits(minilm_server):
    reference = floats(minilm_server, dimensions=20)
    packed = elements(minilm_server, "/embed", "ubinary", dimensions=20)
    bits = np.unpackbits(packed, axis=-1)
    assert bits.shape == (len(TEXTS), 24)
    np.testing.assert_array_equal(bits[:, :20].astype(bool), reference > 0)
    assert not bits[:, 20:].any()


@ROUTES
@pytest.mark.parametrize(("dtype", "offset"), [("int8", 128), ("uint8", 0)])
def test_int8_and_uint8_decode_to_the_float_vector_within_half_a_step(minilm_server, path, dtype, offset):
    reference = floats(minilm_server)
    levels = elements(minilm_server, path, dtype).astype(np.float64) + offset
    decoded = -1 + (levels + 0.5) * STEP  # the middle of the level's step
    assert np.abs(decoded - reference).max() <= STEP / 2 + 1e-6
    cosine = np.sum(decoded * reference, axis=1) / np.linalg.norm(decoded, axis=1)
    assert cosine.min() > 0.999


@pytest.mark.parametrize("dtype", ["int8", "uint8", "binary", "ubinary"])
def test_quantized_vectors_are_byte_for_byte_those_of_sentence_transformers(minilm_server, dtype):
    quantization = pytest.importorskip("sentence_transformers.util.quantization")
    reference = floats(minilm_server)
    ranges = np.array([[-1.0] * 384, [1.0] * 384])  # the documented fixed range
    expected = quantization.quantize_embeddings(reference, precision=dtype, ranges=ranges)
    got = elements(minilm_server, "/v1/embeddings", dtype)
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(got, expected)


def test_components_of_unnormalized_vectors_outside_minus_one_to_one_are_clipped(minilm_server):
    reference = floats(minilm_server, normalize=False)
    assert np.abs(reference).max() > 1  # MiniLM's mean-pooled vectors have components beyond the range
    levels = elements(minilm_server, "/embed", "uint8", normalize=False)
    assert (levels[reference > 1] == 255).all()
    assert (levels[reference < -1] == 0).all()


@ROUTES
def test_float16_decodes_within_float16_rounding(minilm_server, path):
    reference = floats(minilm_server)
    halves = elements(minilm_server, path, "float16").astype(np.float32)
    # Round to nearest: half a unit in the last place, 2**-11 of the value (2**-25 below float16's normal range).
    np.testing.assert_allclose(halves, reference, rtol=2**-11, atol=2**-25)
    assert not np.array_equal(halves, reference)


@ROUTES
def test_base64_without_output_dtype_is_float32_as_before(minilm_server, path):
    reference = floats(minilm_server)
    np.testing.assert_array_equal(elements(minilm_server, path, "float"), reference)
    encoded = embed(minilm_server, path, encoding_format="base64")
    np.testing.assert_array_equal(np.stack([np.frombuffer(base64.b64decode(row), "<f4") for row in encoded]), reference)


def test_the_openai_sdk_decodes_its_default_base64_and_reads_quantized_lists(minilm_server):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{minilm_server.url}/v1", api_key="unused", max_retries=0)
    reference = floats(minilm_server)
    default = client.embeddings.create(model="minilm", input=TEXTS)  # the SDK asks for base64 float32 and decodes it
    np.testing.assert_array_equal(np.array([item.embedding for item in default.data], dtype=np.float32), reference)
    quantized = client.embeddings.create(
        model="minilm", input=TEXTS, encoding_format="float", extra_body={"output_dtype": "int8"}
    )
    levels = np.array([item.embedding for item in quantized.data])
    np.testing.assert_array_equal(levels, elements(minilm_server, "/embed", "int8"))


@pytest.mark.parametrize(
    ("path", "field", "value", "kind"),
    [
        ("/embed", "output_dtype", "int4", "Validation"),
        ("/v1/embeddings", "output_dtype", 8, "invalid_value"),
        ("/embed", "encoding_format", "hex", "Validation"),
        ("/v1/embeddings", "encoding_format", "int8", "invalid_value"),
    ],
)
def test_an_unknown_output_dtype_or_encoding_format_gets_422_naming_the_allowed_values(
    minilm_server, path, field, value, kind
):
    key = "input" if path == "/v1/embeddings" else "inputs"
    with minilm_server.client() as client:
        response = client.post(path, json={key: "a", field: value})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    message, error_kind = (error["message"], error["code"]) if path == "/v1/embeddings" else (error, None)
    if path == "/embed":
        error_kind = response.json()["error_type"]
    assert error_kind == kind
    allowed = ("'float', 'base64'",) if field == "encoding_format" else ("'float16'", "'int8'", "'ubinary'")
    assert all(name in message for name in allowed), message
    assert field in message


def test_the_openapi_document_lists_both_fields_values_on_both_bodies(minilm_server):
    with minilm_server.client() as client:
        schemas = client.get("/openapi.json").json()["components"]["schemas"]
    for body in ("EmbedRequest", "OpenAIEmbeddingsRequest"):
        properties = schemas[body]["properties"]
        assert properties["output_dtype"]["anyOf"][0]["enum"] == ["float", "float16", "int8", "uint8", "binary",
                                                                  "ubinary"]  # fmt: skip
        assert properties["encoding_format"]["anyOf"][0]["enum"] == ["float", "base64"]
