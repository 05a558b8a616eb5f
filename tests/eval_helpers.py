"""A small dataset version for evaluation tests, written exactly in the dataset builder's layout
(``jsonl/`` copies, a ``save_to_disk`` DatasetDict, ``rl_prompts/``), whose next actions depend
on the prompt: a model that learns from it beats the learn-nothing baselines, one that does not
cannot.

Each task asks for one of three things; Claude makes the matching call (with fixed arguments,
the file named relative to the working directory), then answers:

    "Please read the notes."   -> Read {"file_path": "notes.md"}     -> "Done."
    "Please search for TODO."  -> Grep {"pattern": "TODO"}          -> "Done."
    "Please run the tests."    -> Bash {"command": "pytest -q"}     -> "Done."

Held-out sessions repeat the training tasks word for word: these tests check the evaluation
and the gate, not whether a tiny model generalises. Per trace: two decisions (call, then
answer). The most-frequent baseline always answers (1/2); the bigram baseline answers after a
call and guesses the first call (2/3 on the held-out split).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ccrl.trainers.conversation import PlanStep, render_workflow

CWD = "/repo"
KINDS = (
    ("read the notes", "Read", {"file_path": "notes.md"}),
    ("search for TODO", "Grep", {"pattern": "TODO"}),
    ("run the tests", "Bash", {"command": "pytest -q"}),
)
TOOLS = [
    {"type": "function", "function": {"name": "Read", "description": "Read a file.",
                                      "parameters": {"type": "object", "properties": {"file_path": {"type": "string"}},
                                                     "required": ["file_path"]}}},
    {"type": "function", "function": {"name": "Grep", "description": "Search.",
                                      "parameters": {"type": "object", "properties": {"pattern": {"type": "string"}},
                                                     "required": ["pattern"]}}},
    {"type": "function", "function": {"name": "Bash", "description": "Run a command.",
                                      "parameters": {"type": "object", "properties": {"command": {"type": "string"}},
                                                     "required": ["command"]}}},
]
ANSWER = "Done."
SYSTEM = f"You are a coding agent.\n\nWorking directory: {CWD}\n\nTools: Bash, Grep, Read"
WORKFLOW_SYSTEM = SYSTEM + "\n\nAnswer with your whole plan."


def task(i: int) -> tuple[str, str, dict[str, Any]]:
    """(prompt, tool, arguments) of task ``i``."""
    words, tool, args = KINDS[i % len(KINDS)]
    return f"Please {words}.", tool, args


def trajectory(i: int) -> list[dict[str, Any]]:
    """The trajectory conversation of task ``i``."""
    prompt, tool, args = task(i)
    call = {"type": "function", "id": f"toolu_{i}", "function": {"name": tool, "arguments": json.dumps(args)}}
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": f"toolu_{i}", "name": tool, "content": "ok"},
        {"role": "assistant", "content": ANSWER},
    ]


def workflow_completion(i: int) -> str:
    """Claude's plan for task ``i`` in the workflow format."""
    prompt, tool, args = task(i)
    call = {"type": "function", "function": {"name": tool, "arguments": json.dumps(args)}}
    return render_workflow([f"The user asks: {prompt}"], [PlanStep("", [call])], ANSWER)


def _rows(i: int, session: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    prompt, tool, _args = task(i)
    meta = {"trace_id": i, "session_id": session, "parent_id": None, "tools": json.dumps(TOOLS)}
    workflow = [{"role": "system", "content": WORKFLOW_SYSTEM}, {"role": "user", "content": prompt},
                {"role": "assistant", "content": workflow_completion(i)}]
    rows = [{"messages": trajectory(i), "format": "trajectory", "agent_type": None, "decisions": 2, **meta},
            {"messages": workflow, "format": "workflow", "agent_type": None, "decisions": 2, **meta}]
    signals = {"version": 1, "tool_sequence": [tool], "tool_transitions": {}, "reasoning_chain": [{"step": 0, "text": prompt}],
               "constraints": [], "pruning": [], "self_corrections": [], "exploration_depth": "minimal",
               "complexity": {"files_touched": 0, "files_read": 0, "files_changed": 0, "steps": 1, "tool_calls": 1,
                              "distinct_tools": 1, "explore_calls": 1, "change_calls": 0, "failed_calls": 0,
                              "parallel_batches": 0}}
    rl = {"prompt": workflow[:2], "reference_completion": workflow[2]["content"],
          "reference_signals": json.dumps(signals), "reference_tool_sequence": [tool], **meta}
    return rows, rl


def write_dataset_version(root: Path, *, n_train: int = 24, n_eval: int = 6, formats: tuple[str, ...] = ("trajectory", "workflow")) -> Path:
    """Write a dataset version folder: tasks 0..n_train-1 in train (one session each), the next
    ``n_eval`` tasks held out (their own sessions)."""
    from datasets import Dataset, DatasetDict

    root = Path(root)
    (root / "jsonl").mkdir(parents=True)
    splits: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]] = {"train": ([], []), "eval": ([], [])}
    for i in range(n_train + n_eval):
        split = "train" if i < n_train else "eval"
        rows, rl = _rows(i, f"session-{split}-{i}")
        splits[split][0].extend(r for r in rows if r["format"] in formats)
        splits[split][1].append(rl)
    for split, (rows, rl) in splits.items():
        with open(root / "jsonl" / f"{split}.jsonl", "w") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in rows)
        with open(root / "jsonl" / f"rl_prompts.{split}.jsonl", "w") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in rl)
    DatasetDict({s: Dataset.from_list(rows) for s, (rows, _rl) in splits.items()}).save_to_disk(str(root))
    DatasetDict({s: Dataset.from_list(rl) for s, (_rows, rl) in splits.items()}).save_to_disk(str(root / "rl_prompts"))
    return root


def train_tiny_agent(base: Path, dataset: Path, out: Path, *, max_steps: int = 300, examples_per_kind: int = 1) -> Path:
    """Fully fine-tune the tiny model ``base`` on some of the dataset's train trajectories
    (``examples_per_kind`` of each task kind; loss on the
    assistant tokens only, through the training template's generation markers) until greedy
    decoding reproduces every training turn; save it to ``out`` with its template. Fast because
    logits are computed at the assistant positions only (the vocabulary dominates the cost)."""
    import os
    import shutil

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    rows = [json.loads(line) for line in open(Path(dataset) / "jsonl" / "train.jsonl")]
    batch = []
    per_kind: dict[str, int] = {}
    for row in rows:
        kind = row["messages"][1]["content"]
        if row["format"] != "trajectory" or per_kind.get(kind, 0) >= examples_per_kind:
            continue
        per_kind[kind] = per_kind.get(kind, 0) + 1
        encoded = tokenizer.apply_chat_template(row["messages"], tokenize=True, return_dict=True,
                                                return_assistant_tokens_mask=True)
        ids = torch.tensor(encoded["input_ids"])
        mask = torch.tensor(encoded["assistant_masks"])
        positions = (mask[1:] == 1).nonzero().flatten()  # predict token p+1 from position p
        batch.append((ids, positions, ids[positions + 1]))

    def logits(ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        hidden = model.model(input_ids=ids[None]).last_hidden_state[0, positions]
        return model.lm_head(hidden)

    def reproduces() -> bool:
        with torch.no_grad():
            return all(bool((logits(ids, pos).argmax(-1) == targets).all()) for ids, pos, targets in batch)

    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for step in range(max_steps):
        for ids, pos, targets in batch:
            torch.nn.functional.cross_entropy(logits(ids, pos), targets).backward()
        optimizer.step()
        optimizer.zero_grad()
        if step % 5 == 4 and reproduces():
            break
    else:
        raise AssertionError(f"the tiny model did not learn its training turns in {max_steps} steps")
    tmp = Path(out).with_name(Path(out).name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    shutil.copy2(Path(base) / "ccrl_template.json", tmp / "ccrl_template.json")
    os.replace(tmp, out)
    return Path(out)
