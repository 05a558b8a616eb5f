"""Training chat templates, one per supported model family, and attaching them to tokenizers.

The templates live in ``trainers/templates/`` (``chatml.jinja``, ``llama3.jinja``). They carry
``{% generation %}`` markers, so TRL's ``assistant_only_loss=True`` computes the loss on the
assistant's tokens only (closing end-of-turn token included), render parallel tool calls in the
project's one conversation format, and are prefix-preserving. The template is saved with every
adapter and merged model (``tokenizer.save_pretrained`` writes ``chat_template.jinja``), and
``ccrl_template.json`` beside it names the family and its stop tokens, so export and Ollama use
exactly what the model was trained on.

No heavy imports here: a tokenizer is only duck-typed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

TEMPLATE_INFO_FILE = "ccrl_template.json"


@dataclass(frozen=True)
class TemplateFamily:
    """A family of models sharing one chat format."""

    name: str
    """Family name: ``chatml`` or ``llama3``."""
    file: str
    """File name under ``trainers/templates/``."""
    end_of_turn: str
    """Token closing every turn; the assistant learns to emit it (inside the generation block)."""
    stop_tokens: tuple[str, ...]
    """Tokens an inference server must stop on (Ollama ``stop`` parameters)."""
    required_tokens: tuple[str, ...]
    """Special tokens the tokenizer must already have for this family to apply."""
    bos_in_template: bool = False
    """Whether the template writes ``bos_token`` itself (so tokenization must not add another)."""
    tool_role: str = "tool"
    """Role header the template writes for tool results."""
    notes: tuple[str, ...] = field(default_factory=tuple)
    """Human-readable facts about the format, saved beside the model."""


FAMILIES: dict[str, TemplateFamily] = {
    "chatml": TemplateFamily(
        name="chatml",
        file="chatml.jinja",
        end_of_turn="<|im_end|>",
        stop_tokens=("<|im_end|>", "<|im_start|>"),
        required_tokens=("<|im_start|>", "<|im_end|>"),
        bos_in_template=False,
        tool_role="tool",
    ),
    "llama3": TemplateFamily(
        name="llama3",
        file="llama3.jinja",
        end_of_turn="<|eot_id|>",
        stop_tokens=("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>"),
        required_tokens=("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
        bos_in_template=True,
        tool_role="ipython",
    ),
}


class TemplateError(ValueError):
    """No training template fits a tokenizer, or a saved template is missing."""


def template_path(family: str) -> Path:
    """Path of a family's Jinja file inside the installed package."""
    info = _family(family)
    return Path(str(resources.files("ccrl.trainers").joinpath("templates", info.file)))


def load_template(family: str) -> str:
    """The Jinja source of a family's training template."""
    return template_path(family).read_text(encoding="utf-8")


def _family(name: str) -> TemplateFamily:
    try:
        return FAMILIES[name]
    except KeyError:
        raise TemplateError(
            f"unknown chat template family {name!r}; supported: {', '.join(sorted(FAMILIES))}"
        ) from None


def detect_family(tokenizer: Any) -> str:
    """Which family's template fits this tokenizer, from the special tokens in its vocabulary.

    Llama 3 is checked first: its vocabulary has no ChatML tokens, but some ChatML-style
    vocabularies are large, so the more specific family wins.
    """
    vocab = tokenizer.get_vocab()
    for name in ("llama3", "chatml"):
        if all(tok in vocab for tok in FAMILIES[name].required_tokens):
            return name
    raise TemplateError(
        "no ccrl training template fits this tokenizer: it has neither Llama 3 header tokens "
        "(<|start_header_id|>, <|eot_id|>) nor ChatML tokens (<|im_start|>, <|im_end|>). "
        f"Supported families: {', '.join(sorted(FAMILIES))}."
    )


def attach_template(tokenizer: Any, family: str | None = None) -> TemplateFamily:
    """Set the family's training template on ``tokenizer`` and make its special tokens agree.

    - ``chat_template`` becomes our training template (with generation markers).
    - ``eos_token`` becomes the end-of-turn token, so generation stops where the model learned to.
    - a missing ``pad_token`` falls back to a reserved padding token when the vocabulary has one,
      else to the end-of-turn token (padding positions are masked out of the loss either way).
    Returns the family used.
    """
    info = _family(family or detect_family(tokenizer))
    vocab = tokenizer.get_vocab()
    missing = [tok for tok in info.required_tokens if tok not in vocab]
    if missing:
        raise TemplateError(
            f"the {info.name} template needs special tokens this tokenizer lacks: {', '.join(missing)}"
        )
    tokenizer.chat_template = load_template(info.name)
    tokenizer.eos_token = info.end_of_turn
    if tokenizer.pad_token is None:
        reserved = "<|finetune_right_pad_id|>"
        tokenizer.pad_token = reserved if reserved in vocab else info.end_of_turn
    return info


def template_info(family: str, *, tools_in_training: bool | None = None) -> dict[str, Any]:
    """The JSON saved beside a model as ``ccrl_template.json``.

    ``tools_in_training`` records whether training prompts carried the tool schemas block
    (export uses it to render prompts exactly as the model saw them).
    """
    info = asdict(_family(family))
    if tools_in_training is not None:
        info["tools_in_training"] = tools_in_training
    info["stop_tokens"] = list(info["stop_tokens"])
    info["required_tokens"] = list(info["required_tokens"])
    info["notes"] = list(info["notes"])
    info["template_file"] = "chat_template.jinja"
    return info


def save_template(tokenizer: Any, family: str, out_dir: Path, *, tools_in_training: bool | None = None) -> None:
    """Save the tokenizer (which writes ``chat_template.jinja``) and ``ccrl_template.json``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.chat_template = load_template(family)
    tokenizer.save_pretrained(str(out_dir))
    info = template_info(family, tools_in_training=tools_in_training)
    (out_dir / TEMPLATE_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")


def read_template_info(model_dir: Path) -> dict[str, Any]:
    """The ``ccrl_template.json`` saved with a model (adapter, merged model or base)."""
    path = Path(model_dir) / TEMPLATE_INFO_FILE
    if not path.is_file():
        raise TemplateError(f"{path} is missing: this model was not saved by ccrl's trainer")
    return json.loads(path.read_text())
