"""Counts in reports agree with their nouns: one step, two steps (the demo report said "1 steps")."""

from __future__ import annotations

from types import SimpleNamespace

from ccrl.agent.operations.demo_report import _step_detail, _training_html
from ccrl.agent.operations.wording import plural


def test_plural():
    assert [plural(n, "step") for n in (0, 1, 2)] == ["0 steps", "1 step", "2 steps"]
    assert plural(1, "held-out prompt") == "1 held-out prompt" and plural(None, "step") == "? steps"
    assert plural(3, "child", "children") == "3 children"


def test_the_demo_report_says_one_step():
    rl = SimpleNamespace(key="rl", summary={"run_id": 2, "algorithm": "grpo", "global_step": 1,
                                            "heldout_reward_before": 0.0, "heldout_reward_after": 0.0})
    assert "run 2 (GRPO): 1 step, held-out" in _step_detail(rl)
    sft = SimpleNamespace(key="sft", summary={"run_id": 1, "global_step": 40})
    assert "run 1: 40 steps," in _step_detail(sft)
    html = _training_html(SimpleNamespace(sft={}, rl={"algorithm": "grpo", "global_step": 1, "episodes": 1,
                                                        "num_generations": 4, "heldout_prompts": 1}), {})
    assert "1 step, 1 prompt x 4 completions" in html and "on 1 held-out prompt " in html
