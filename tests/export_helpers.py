"""Tiny real models for the export and deploy tests, built once per test session.

- ``tiny_base``: a random ``LlamaForCausalLM`` (hidden 256, intermediate 768: K-quant friendly
  row widths) with the SmolLM2 tokenizer and the ChatML training template.
- ``overfit_model``: that model fully fine-tuned on ``EXAMPLES`` (loss on the assistant tokens,
  through the training template's generation markers) until greedy decoding reproduces every
  answer, closing ``<|im_end|>`` included, with a margin: a model that has learned to end its turn.
- ``overfit_gguf``: the overfit model exported (q8_0) plus two more quantizations of it, each
  a distinct file: three deployable versions of one model.

The converter and the SmolLM2 tokenizer are cached in the repository's git-ignored ``.cache``
(``CCRL_TEST_CACHE`` overrides), so a machine fetches them once.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from ccrl.trainers.conversation import system_prompt

REPO = Path(__file__).resolve().parent.parent
from conftest import TEST_CACHE, embedded_tokenizer_dir  # noqa: E402
# The system prompt is the one ``ccrl deploy`` registers for a version without a dataset, and
# the first user message is the export's default verification probe: the deployed model then
# sees exactly its training text when a test talks to it through Ollama.
SYSTEM = {"role": "system", "content": system_prompt([])}
EXAMPLES = [
    [SYSTEM, {"role": "user", "content": "Say hello in one short sentence."},
     {"role": "assistant", "content": "Hello there!"}],
    [SYSTEM, {"role": "user", "content": "Count to three."}, {"role": "assistant", "content": "One, two, three."}],
    [SYSTEM, {"role": "user", "content": "Read the app."},
     {"role": "assistant", "content": "",
      "tool_calls": [{"type": "function", "function": {"name": "Read", "arguments": '{"file_path":"/app.py"}'}}]}],
]
MARGIN_LOSS = 0.1


def converter_cache() -> Path:
    return TEST_CACHE / "export"


def tiny_base(root: Path) -> Path:
    """The tiny random base model (built once under ``root``)."""
    from ccrl.trainers.base_models import build_tiny_llama

    from conftest import folder_lock

    dest = root / "tiny-base"
    with folder_lock(root / "tiny-base.lock"):
        if not (dest / "config.json").is_file():
            build_tiny_llama(dest, embedded_tokenizer_dir())
    return dest


def overfit_model(root: Path) -> Path:
    """The tiny model trained on ``EXAMPLES`` until it reproduces them (built once)."""
    from conftest import folder_lock

    dest = root / "tiny-overfit"
    with folder_lock(root / "tiny-overfit.lock"):
        if not (dest / "config.json").is_file():
            _train_overfit(root, dest)
    return dest


def _train_overfit(root: Path, dest: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    torch.manual_seed(0)
    base = tiny_base(root)
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    # One padded batch (the dense 49k x 256 embedding gradient is then computed once per step),
    # the loss on the assistant's tokens only (the training template's generation markers), and
    # logits only at those positions: the vocabulary projection is the cost of this model.
    rows = [tokenizer.apply_chat_template(c, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
            for c in EXAMPLES]
    length = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), length), tokenizer.pad_token_id)
    attention = torch.zeros((len(rows), length), dtype=torch.long)
    predicts = torch.zeros((len(rows), length), dtype=torch.bool)  # position p predicts an assistant token p + 1
    for i, row in enumerate(rows):
        n = len(row["input_ids"])
        ids[i, :n] = torch.tensor(row["input_ids"])
        attention[i, :n] = 1
        predicts[i, : n - 1] = torch.tensor(row["assistant_masks"][1:]) == 1
    keep = predicts.any(0).nonzero().flatten()
    selected = predicts[:, keep]
    targets = ids[:, keep + 1][selected]

    def logits() -> torch.Tensor:
        return model(input_ids=ids, attention_mask=attention, logits_to_keep=keep).logits[selected]

    def reproduces() -> bool:
        with torch.no_grad():
            return bool((logits().argmax(-1) == targets).all())

    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for step in range(300):
        loss = torch.nn.functional.cross_entropy(logits(), targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        # Done when greedy decoding reproduces every answer with a margin (a low loss), so that
        # 8-bit rounding cannot flip a token.
        if loss.item() < MARGIN_LOSS and reproduces():
            break
    else:
        raise AssertionError("the tiny model did not learn its examples in 300 steps")
    assert reproduces()
    tmp = root / "tiny-overfit.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    shutil.copy2(base / "ccrl_template.json", tmp / "ccrl_template.json")
    os.replace(tmp, dest)


def expected_reply(conversation: list[dict[str, Any]]) -> str:
    """The assistant text of an example, as the model was trained to write it."""
    from ccrl.trainers.conversation import render_assistant_text

    return render_assistant_text(conversation[-1])


def overfit_gguf(root: Path) -> dict[str, Any]:
    """The overfit model exported and verified, plus q4_k_m and f16 files of it.

    Returns ``{"result": ExportResult dict, "variants": {quant: {"path", "sha256", "size"}}}``.
    """
    from conftest import folder_lock

    info_path = root / "overfit-gguf.json"
    with folder_lock(root):  # several test processes may ask at once (pytest-xdist)
        if info_path.is_file():
            return json.loads(info_path.read_text())
        return _build_overfit_gguf(root, info_path)


def _build_overfit_gguf(root: Path, info_path: Path) -> dict[str, Any]:
    from ccrl.trainers.export import export_model, quantize, sha256_file

    model = overfit_model(root)
    out = root / "gguf"
    result = export_model(model, out, name="tiny-overfit", cache_dir=converter_cache(), threads=1,
                          expected_reply=expected_reply(EXAMPLES[0]))  # the default probe is EXAMPLES[0]
    variants = {result.quant: {"path": str(result.path), "sha256": result.sha256, "size": result.size_bytes}}
    for quant in ("q4_k_m", "f16"):
        path = out / f"tiny-overfit-{quant}.gguf"
        quantize(result.path, path, quant, threads=1, allow_requantize=True)
        variants[quant] = {"path": str(path), "sha256": sha256_file(path), "size": path.stat().st_size}
    info = {"result": result.to_dict(), "variants": variants}
    info_path.write_text(json.dumps(info, default=str))
    return info
