"""The Ollama side of the chat format: a Go ``text/template`` per model family that renders a
conversation to exactly the text the model was trained on, and the stop tokens to go with it.

Ollama does not run the Jinja template embedded in a GGUF; it renders its own Go template over
``.System``, ``.Messages`` (``.Role``, ``.Content``, ``.ToolCalls``) and ``.Tools``. A template
that differs from the training one by a single newline or header is the most common cause of
garbled output after export, so each template here mirrors ``trainers/templates/<family>.jinja``
construct by construct, and ``tests/test_ollama_template.py`` renders the same conversations
through Go's ``text/template`` (the reference implementation) and through Jinja and compares
the bytes.

What Ollama does before the template sees the messages (``template.Execute`` in Ollama), and
what the templates account for:

- ``.Messages`` keeps the system messages, and consecutive messages of the same role (except
  ``tool``) are merged with a blank line. Training conversations never have two user or two
  assistant messages in a row, so this does not change them.
- A conversation that ends with an assistant message is a *prefill*: the model continues that
  message, so the templates leave it open (no end-of-turn), as Ollama's own templates do.
  Everywhere else they close every turn exactly like the training template.
- The BOS token is added by Ollama's runner (``tokenizer.ggml.add_bos_token``), so the Llama 3
  template does not write ``<|begin_of_text|>`` itself.
- A tool call's arguments reach the template as a plain Go map (``convertMessagesForTemplate`` in
  Ollama's ``template/template.go`` since v0.14; the map type itself in v0.2.6 to v0.13), so
  ``{{ .Function.Arguments }}`` prints ``json.Marshal`` of a map: compact, keys sorted at every
  level whatever order the client sent, ``<``, ``>`` and ``&`` escaped, numbers as float64.
  ``conversation.tool_arguments`` writes every call's ``arguments`` in exactly that form, so the
  earlier calls of a multi-turn conversation that a client sends back render to the training
  text byte for byte, like the current turn.
- The tool call is the first text inside ``{{ if .ToolCalls }}``: Ollama finds the tool-call tag
  (``<tool_call>``) there to parse the model's calls out of its output.
- The tool list (``.Tools``) is written one JSON object per line with Ollama's encoder (compact,
  Ollama's field order, properties sorted); the text around it is the training template's.

Pure module: no heavy imports (``ccrl.trainers.conversation`` is pure too).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from ccrl.trainers.conversation import tool_arguments

# Shared by both families: the tool list block, written the way the training templates write it
# (header, one JSON object per line, the call syntax), with Ollama's JSON encoder for each tool.
_TOOLS_BLOCK = (
    '{{- define "tools" -}}'
    "# Tools\n\nYou may call one or more of these functions. Their signatures are within <tools></tools>:\n<tools>"
    "{{- range . }}\n{{ json . }}{{ end }}\n</tools>\n\n"
    'For each call, write <tool_call>{"name": <function-name>, "arguments": <args-json-object>}</tool_call> on its own line.'
    "{{- end -}}"
)

# An assistant message: content, a newline when calls follow it, then one call per line. The
# `with` (not an `if`) keeps the first `if .ToolCalls` node the one whose first text is the tag.
_ASSISTANT_BODY = (
    "{{- .Content }}"
    '{{- with .ToolCalls }}{{ if $m.Content }}{{ "\\n" }}{{ end }}{{ end }}'
    "{{- if .ToolCalls }}{{ range $j, $call := .ToolCalls }}"
    '<tool_call>{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}</tool_call>'
    '{{- if gt (len (slice $m.ToolCalls $j)) 1 }}{{ "\\n" }}{{ end }}'
    "{{- end }}{{ end }}"
)

CHATML_TEMPLATE = (
    _TOOLS_BLOCK
    + "{{- range $i, $m := .Messages }}"
    "{{- $last := eq (len (slice $.Messages $i)) 1 }}"
    '{{- if and (eq $i 0) (eq .Role "system") }}'
    '{{- "<|im_start|>system\\n" }}{{ .Content }}'
    '{{- if $.Tools }}{{ if .Content }}{{ "\\n\\n" }}{{ end }}{{ template "tools" $.Tools }}{{ end }}'
    '{{- "<|im_end|>\\n" }}'
    "{{- else }}"
    '{{- if and (eq $i 0) $.Tools }}{{ "<|im_start|>system\\n" }}{{ template "tools" $.Tools }}{{ "<|im_end|>\\n" }}{{ end }}'
    '{{- if eq .Role "assistant" }}'
    '{{- "<|im_start|>assistant\\n" }}'
    + _ASSISTANT_BODY
    + '{{- if not $last }}{{ "<|im_end|>\\n" }}{{ end }}'
    "{{- else }}"
    '{{- "<|im_start|>" }}{{ .Role }}{{ "\\n" }}{{ .Content }}{{ "<|im_end|>\\n" }}'
    "{{- end }}"
    "{{- end }}"
    '{{- if and $last (ne .Role "assistant") }}{{ "<|im_start|>assistant\\n" }}{{ end }}'
    "{{- end }}"
)

LLAMA3_TEMPLATE = (
    _TOOLS_BLOCK
    + "{{- range $i, $m := .Messages }}"
    "{{- $last := eq (len (slice $.Messages $i)) 1 }}"
    '{{- if and (eq $i 0) (eq .Role "system") }}'
    '{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}{{ .Content }}'
    '{{- if $.Tools }}{{ if .Content }}{{ "\\n\\n" }}{{ end }}{{ template "tools" $.Tools }}{{ end }}'
    '{{- "<|eot_id|>" }}'
    "{{- else }}"
    '{{- if and (eq $i 0) $.Tools }}{{ "<|start_header_id|>system<|end_header_id|>\\n\\n" }}'
    '{{ template "tools" $.Tools }}{{ "<|eot_id|>" }}{{ end }}'
    '{{- if eq .Role "assistant" }}'
    '{{- "<|start_header_id|>assistant<|end_header_id|>\\n\\n" }}'
    + _ASSISTANT_BODY
    + '{{- if not $last }}{{ "<|eot_id|>" }}{{ end }}'
    '{{- else if or (eq .Role "tool") (eq .Role "ipython") }}'
    '{{- "<|start_header_id|>ipython<|end_header_id|>\\n\\n" }}{{ .Content }}{{ "<|eot_id|>" }}'
    "{{- else }}"
    '{{- "<|start_header_id|>" }}{{ .Role }}{{ "<|end_header_id|>\\n\\n" }}{{ .Content }}{{ "<|eot_id|>" }}'
    "{{- end }}"
    "{{- end }}"
    '{{- if and $last (ne .Role "assistant") }}{{ "<|start_header_id|>assistant<|end_header_id|>\\n\\n" }}{{ end }}'
    "{{- end }}"
)


@dataclass(frozen=True)
class OllamaFamily:
    """What Ollama needs for one chat-format family."""

    name: str
    template: str
    """The Go template (``TEMPLATE`` of the Modelfile)."""
    stop: tuple[str, ...]
    """``stop`` parameters: every turn boundary the model could run past."""
    end_of_turn: str
    """The token the model emits to end its turn."""
    tool_call_tag: str = "<tool_call>"
    """What Ollama finds after ``{{ if .ToolCalls }}`` and uses to parse calls from the output."""


FAMILIES: dict[str, OllamaFamily] = {
    "chatml": OllamaFamily(
        name="chatml",
        template=CHATML_TEMPLATE,
        stop=("<|im_end|>", "<|im_start|>"),
        end_of_turn="<|im_end|>",
    ),
    "llama3": OllamaFamily(
        name="llama3",
        template=LLAMA3_TEMPLATE,
        stop=("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>"),
        end_of_turn="<|eot_id|>",
    ),
}


class OllamaTemplateError(ValueError):
    """No Ollama template exists for a model's chat format."""


def family(name: str) -> OllamaFamily:
    """The Ollama template and stop tokens of a training-template family (``chatml``, ``llama3``)."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise OllamaTemplateError(
            f"no Ollama template for the chat format {name!r}; supported: {', '.join(sorted(FAMILIES))}"
        ) from None


def detect_family(chat_template: str) -> str:
    """The family of a Jinja chat template, from the turn markers it writes."""
    if "<|start_header_id|>" in chat_template and "<|eot_id|>" in chat_template:
        return "llama3"
    if "<|im_start|>" in chat_template and "<|im_end|>" in chat_template:
        return "chatml"
    raise OllamaTemplateError(
        "the model's chat template is neither Llama 3 (<|start_header_id|>, <|eot_id|>) nor ChatML "
        "(<|im_start|>, <|im_end|>): ccrl has no Ollama template for it"
    )


_GENERATION_TAG = re.compile(r"\{%-?\s*(?:generation|endgeneration)\s*-?%\}")


def strip_generation_markers(chat_template: str) -> str:
    """The template without TRL's ``{% generation %}`` / ``{% endgeneration %}`` markers.

    They only mark which tokens carry the loss; the rendered text is the same without them, and
    runtimes other than transformers (llama.cpp's own Jinja engine) do not know the tag. Blocks
    written ``{%- generation -%}`` trim whitespace only around the tag itself, and the training
    templates put nothing but Jinja tags there, so removal keeps the output byte for byte.
    """
    return _GENERATION_TAG.sub("", chat_template)


def ollama_arguments_json(arguments: dict[str, Any]) -> str:
    """A tool call's arguments exactly as Ollama prints ``{{ .Function.Arguments }}``: ccrl's
    canonical form, :func:`ccrl.trainers.conversation.tool_arguments` (see there)."""
    if not isinstance(arguments, dict):
        raise TypeError(f"tool-call arguments must be a JSON object, not {type(arguments).__name__}")
    return tool_arguments(arguments)


def ollama_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Training-format messages (``ccrl.trainers.conversation``) as Ollama chat API messages.

    A call's ``arguments`` JSON string becomes an object (key order kept), a tool result's
    ``name`` becomes ``tool_name``; content is always a string.
    """
    out: list[dict[str, Any]] = []
    for message in messages:
        converted: dict[str, Any] = {"role": message.get("role", ""), "content": _text(message.get("content"))}
        calls = []
        for call in message.get("tool_calls") or []:
            fn = call.get("function") if isinstance(call.get("function"), dict) else call
            arguments = fn.get("arguments")
            if isinstance(arguments, str):
                arguments = json.loads(arguments) if arguments.strip() else {}
            calls.append({"function": {"name": fn.get("name", ""), "arguments": arguments or {}}})
        if calls:
            converted["tool_calls"] = calls
        if message.get("role") == "tool" and message.get("name"):
            converted["tool_name"] = message["name"]
        out.append(converted)
    return out


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return str(content)


def ollama_parameters(family_name: str, *, num_ctx: int | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``parameters`` of the Ollama model: the family's stop tokens, the context length,
    and any extra Modelfile parameters."""
    params: dict[str, Any] = {"stop": list(family(family_name).stop)}
    if num_ctx:
        params["num_ctx"] = int(num_ctx)
    params.update(extra or {})
    return params
