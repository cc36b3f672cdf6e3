"""Images (issue 14): a tiny random CLIP served as kind multimodal, its text and image vectors against a direct
transformers run, the inline image forms, and the limits on bytes, pixels and formats.

The model is built here with ``save_pretrained`` (no weights can be downloaded): CLIP's towers with MiniLM's
tokenizer (its [SEP] is the text tower's end token) and a 32x32 image processor.
"""

from __future__ import annotations

import base64
import io
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import TOKENIZER_FILES, model_settings, run_server

pytestmark = pytest.mark.integration

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
Image = pytest.importorskip("PIL.Image")


@pytest.fixture(scope="module")
def clip_path(minilm_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = transformers.CLIPConfig(
        text_config={"vocab_size": 30522, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 4, "max_position_embeddings": 77, "bos_token_id": 101,
                     "eos_token_id": 102, "pad_token_id": 0},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                       "image_size": 32, "patch_size": 8},
        projection_dim=16,
    )  # fmt: skip
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-clip")
    transformers.CLIPModel(config).save_pretrained(path)
    processor = transformers.CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor.save_pretrained(path)
    for file in TOKENIZER_FILES:
        shutil.copy(minilm_path / file, path / file)
    return path


@pytest.fixture(scope="module")
def clip_server(clip_path: Path):
    with run_server(model_settings(clip_path, served_model_name="clip"), image_max_bytes=200_000,
                    image_max_pixels=1_000_000) as running:  # fmt: skip
        yield running


def png(width: int = 40, height: int = 30, seed: int = 0, fmt: str = "PNG", channels: int = 3) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, channels), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format=fmt)
    return out.getvalue()


def data_url(data: bytes, media: str = "image/png") -> str:
    return f"data:{media};base64,{base64.b64encode(data).decode()}"


def reference(path: Path, texts: list[str], images: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """The model's own normalized projections, computed directly with transformers."""
    model = transformers.CLIPModel.from_pretrained(path).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    processor = transformers.CLIPImageProcessorPil.from_pretrained(path)
    with torch.inference_mode():
        tokens = tokenizer(texts, padding=True, return_tensors="pt")
        text = model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
        decoded = [Image.open(io.BytesIO(b)) for b in images]  # as a user would: the processor converts them
        pixels = processor(images=decoded, return_tensors="pt")["pixel_values"]
        image = model.get_image_features(pixel_values=pixels)
    unit = [torch.nn.functional.normalize(t.pooler_output, dim=-1).numpy() for t in (text, image)]
    return unit[0], unit[1]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.sum(a * b, axis=1)


def test_text_and_image_vectors_equal_a_direct_transformers_run(clip_server, clip_path):
    texts = ["a photo of a cat", "a diagram"]
    # RGB PNG, JPEG, WebP, and a PNG with an alpha channel (composited onto white, as transformers does)
    images = [png(seed=1), png(64, 20, seed=2, fmt="JPEG"), png(seed=3, fmt="WEBP"), png(seed=4, channels=4)]
    body = {"input": [texts[0], {"image": data_url(images[0])},
                      {"image": base64.b64encode(images[1]).decode(), "type": "image/jpeg"}, texts[1],
                      {"image": data_url(images[2], "image/webp")}, {"image": data_url(images[3])}]}  # fmt: skip
    with clip_server.client() as client:
        response = client.post("/v1/embeddings", json=body)
        assert response.status_code == 200, response.text
        got = np.array([row["embedding"] for row in response.json()["data"]], dtype=np.float32)
        alone = client.post("/embed", json={"inputs": [{"image": data_url(images[0])}]}).json()
    text_ref, image_ref = reference(clip_path, texts, images)
    assert got.shape == (6, 16)
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert cosines(got[[0, 3]], text_ref).min() >= 0.9999
    assert cosines(got[[1, 2, 4, 5]], image_ref).min() >= 0.9999
    assert cosines(np.array(alone, dtype=np.float32), image_ref[:1]).min() >= 0.9999


def test_text_only_requests_use_the_text_tower(clip_server, clip_path):
    with clip_server.client() as client:
        response = client.post("/embed", json={"inputs": ["a photo of a dog", "x"]})
    assert response.status_code == 200, response.text
    text_ref, _ = reference(clip_path, ["a photo of a dog", "x"], [png()])
    assert cosines(np.array(response.json(), dtype=np.float32), text_ref).min() >= 0.9999


def test_the_model_reports_kind_multimodal_and_its_projection_size(clip_server):
    with clip_server.client() as client:
        model = client.get("/v1/models/clip").json()
    assert (model["kind"], model["dimensions"]) == ("multimodal", 16)


def test_an_image_costs_its_vision_positions(clip_server):
    assert clip_server.runtime.info.image_tokens == (32 // 8) ** 2 + 1


def bomb() -> bytes:
    """A valid PNG header claiming 50000 x 50000 pixels (2.5 gigapixels) in a few hundred bytes."""
    raw = zlib.compress(b"\x00" * 64)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 50_000, 50_000, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    ("image", "status", "code"),
    [
        ({"image": data_url(b"x" * 300_000)}, 413, "image_too_large"),
        ({"image": data_url(bomb())}, 422, "invalid_image"),
        ({"image": data_url(b"<html>not an image</html>")}, 422, "invalid_image"),
        ({"image": data_url(png(fmt="TIFF"), "image/png")}, 422, "invalid_image"),
        ({"image": "!!!not base64!!!", "type": "image/png"}, 422, "invalid_image"),
        ({"image": "data:text/html;base64,PGh0bWw+"}, 422, "invalid_image"),
        ({"image": "iVBORw0KGgo="}, 422, "invalid_value"),
        ({"image": "ftp://example.com/cat.png"}, 422, "invalid_value"),
        ({"image": data_url(png()), "extra": 1}, 422, "invalid_value"),
    ],
    ids=["oversize", "decompression-bomb", "not-an-image", "format-not-allowed", "bad-base64", "not-an-image-type",
         "raw-base64-without-type", "other-scheme", "unknown-key"],
)  # fmt: skip
def test_bad_image_inputs_get_a_clear_4xx_naming_the_input(clip_server, image, status, code):
    with clip_server.client() as client:
        response = client.post("/v1/embeddings", json={"input": ["fine", image]})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert error["param"] == "input"
    assert "input[1]" in error["message"]


def test_an_image_sent_to_a_text_model_is_refused_before_anything_is_fetched(minilm_server):
    with minilm_server.client() as client:
        response = client.post("/embed", json={"inputs": [{"image": "https://192.0.2.1/never-fetched.png"}]})
    assert response.status_code == 422
    assert "embed images" in response.json()["error"]


def test_the_openapi_document_shows_image_inputs_only_where_a_model_takes_them(clip_server, minilm_server):
    for server, documented in ((clip_server, True), (minilm_server, False)):
        with server.client() as client:
            document = client.get("/openapi.json").text
        assert ("[Hh][Tt][Tt][Pp][Ss]?://" in document) is documented
