"""Indistinguishability: blind pairs for people, and an automatic two-sample check.

- :func:`canonical_plan` renders any workflow-format text the same way (the project's one
  parser and renderer, long arguments cut alike), so in a blind pair nothing but the plan's
  content can give away who wrote it: not whitespace, not heading style, not argument length.
- :func:`blind_pair` puts Claude's plan and the model's in a random order.
- :func:`two_sample_check` trains a simple classifier (logistic regression on tool n-grams and
  length features) to tell Claude's plans from a model's, and reports its cross-validated
  accuracy with a Wilson interval. An accuracy near 50% means "indistinguishable" only when the
  same classifier clearly tells the *base* model's plans from Claude's (the control): a check
  that cannot tell anything apart proves nothing. :func:`verdict` says which case holds.

scikit-learn is imported inside the functions that need it (the [train] extra).
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ccrl.trainers import conversation as conv
from ccrl.trainers.metrics import END, START, Rate, rate

MIN_PER_CLASS = 4
"""Fewer plans than this of either kind and the check is not run (nothing to cross-validate)."""
MAX_FOLDS = 5


CUT = "…[cut]"
_CUT_MARKER = re.compile(r"…\[ccrl: \d+ characters omitted\]$")


def _cut(value: Any, limit: int) -> Any:
    """Long strings cut to ``limit`` with one marker that does not say how much was cut, so a
    plan cut when the dataset was built and a generated one cut now look the same."""
    if isinstance(value, str):
        base = _CUT_MARKER.sub("", value)
        cut = base != value or len(base) > limit
        return base[:limit] + CUT if cut else base
    if isinstance(value, dict):
        return {k: _cut(v, limit) for k, v in value.items()}
    if isinstance(value, list):
        return [_cut(v, limit) for v in value]
    return value


def canonical_plan(text: str, *, argument_max_chars: int = conv.WORKFLOW_ARGUMENT_MAX_CHARS) -> str:
    """A workflow completion re-rendered in the one canonical form (see the module docstring).

    Text that is not a workflow at all keeps its words: they land in the response section, so a
    person sees what the model wrote.
    """
    workflow = conv.parse_workflow(text or "")
    if not workflow.reasoning and not workflow.plan and not workflow.response.strip():
        return conv.render_workflow([], [], (text or "").strip())
    plan = []
    for step in workflow.plan:
        calls = []
        for call in step.calls:
            name = call["function"]["name"]
            arguments = conv.tool_call_input(call)
            value = _cut(arguments, argument_max_chars) if arguments is not None else {}
            calls.append({"type": "function", "function": {"name": name, "arguments": conv.tool_arguments(value)}})
        plan.append(conv.PlanStep(step.reason, calls))
    return conv.render_workflow(workflow.reasoning, plan, workflow.response.strip())


@dataclass(frozen=True)
class BlindPair:
    """Two plans for one prompt in a random order; ``claude_position`` is 1 or 2."""

    first: str
    second: str
    claude_position: int


def blind_pair(claude_plan: str, model_plan: str, rng: random.Random) -> BlindPair:
    """Claude's and the model's plans, both canonical, in a random order."""
    a, b = canonical_plan(claude_plan), canonical_plan(model_plan)
    if rng.random() < 0.5:
        return BlindPair(a, b, 1)
    return BlindPair(b, a, 2)


def plan_features(text: str) -> dict[str, float]:
    """What the classifier sees of a plan: tool unigrams and bigrams (with start and end), and
    length features (calls, steps, parallel steps, reasoning items, words, characters)."""
    workflow = conv.parse_workflow(text or "")
    tools = workflow.tool_sequence
    features: dict[str, float] = {}
    chain = [START, *tools, END]
    for name in tools:
        features[f"tool={name}"] = features.get(f"tool={name}", 0.0) + 1.0
    for a, b in zip(chain, chain[1:]):
        features[f"pair={a}>{b}"] = features.get(f"pair={a}>{b}", 0.0) + 1.0
    words = len((text or "").split())
    features.update({
        "len:calls": float(len(tools)),
        "len:steps": float(len(workflow.plan)),
        "len:parallel_steps": float(sum(1 for s in workflow.plan if len(s.calls) > 1)),
        "len:reasoning_items": float(len(workflow.reasoning)),
        "len:log_words": math.log1p(words),
        "len:log_chars": math.log1p(len(text or "")),
        "len:log_response_chars": math.log1p(len(workflow.response)),
        "format:errors": float(len(workflow.errors)),
    })
    return features


@dataclass
class TwoSampleResult:
    """Cross-validated accuracy of telling plans of kind A (Claude's) from kind B."""

    accuracy: Rate | None
    """None when there were too few plans to run the check."""
    n_claude: int
    n_other: int
    folds: int
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        data = asdict(self)
        data["accuracy"] = self.accuracy.to_dict() if self.accuracy else None
        return data


def two_sample_check(claude_plans: Sequence[str], other_plans: Sequence[str], *,
                     groups: Sequence[Any] | None = None, confidence: float = 0.95, seed: int = 0) -> TwoSampleResult:
    """How well logistic regression tells Claude's plans from the others, out of sample.

    Every plan is predicted by a model fitted without it (stratified k-fold; with ``groups``,
    e.g. the prompt of each plan given as ``claude groups + other groups``, both plans for one
    prompt stay in the same fold). Returns the accuracy over all plans with a Wilson interval.
    """
    n_a, n_b = len(claude_plans), len(other_plans)
    if min(n_a, n_b) < MIN_PER_CLASS:
        return TwoSampleResult(None, n_a, n_b, 0, f"too few plans to cross-validate (need {MIN_PER_CLASS} of each kind)")
    import numpy as np
    from sklearn.feature_extraction import DictVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    texts = [*claude_plans, *other_plans]
    labels = np.array([1] * n_a + [0] * n_b)
    features = [plan_features(t) for t in texts]
    folds = min(MAX_FOLDS, n_a, n_b)
    if groups is not None:
        groups = list(groups)
        if len(groups) != len(texts):
            raise ValueError(f"{len(groups)} groups for {len(texts)} plans")
        folds = min(folds, len(set(groups)))
        splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        splits = splitter.split(features, labels, groups)
    else:
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        splits = splitter.split(features, labels)
    predicted = np.zeros(len(texts), dtype=int)
    for train_idx, test_idx in splits:
        model = make_pipeline(DictVectorizer(sparse=False), StandardScaler(),
                              LogisticRegression(C=1.0, max_iter=2000))
        train_labels = labels[train_idx]
        if len(set(train_labels.tolist())) < 2:  # a fold without both kinds: predict its only kind
            predicted[test_idx] = train_labels[0]
            continue
        model.fit([features[i] for i in train_idx], train_labels)
        predicted[test_idx] = model.predict([features[i] for i in test_idx])
    correct = int((predicted == labels).sum())
    return TwoSampleResult(rate(correct, len(texts), confidence), n_a, n_b, folds)


INDISTINGUISHABLE = "indistinguishable"
DISTINGUISHABLE = "distinguishable"
INCONCLUSIVE = "inconclusive"


def verdict(model: TwoSampleResult, control: TwoSampleResult | None) -> tuple[str, str]:
    """``(verdict, why)`` from the model's check and the base-model control.

    - ``distinguishable``: the classifier tells the model's plans from Claude's (the interval's
      lower end is above 50%);
    - ``indistinguishable``: it cannot (the interval holds 50%), while it clearly tells the
      base model's plans from Claude's (the control's lower end is above 50%);
    - ``inconclusive``: too few plans, or the control fails too (the check has no power here).
    """
    if model.accuracy is None:
        return INCONCLUSIVE, model.note or "the check did not run"
    if model.accuracy.low > 0.5:
        return DISTINGUISHABLE, f"accuracy {model.accuracy.value:.0%} [{model.accuracy.low:.0%}, {model.accuracy.high:.0%}] is above chance"
    if control is None or control.accuracy is None:
        return INCONCLUSIVE, "no base-model control: an accuracy near chance proves nothing without one"
    if control.accuracy.low > 0.5:
        return INDISTINGUISHABLE, (f"accuracy {model.accuracy.value:.0%} is not above chance, while the same check tells the "
                                   f"base model apart ({control.accuracy.value:.0%}, lower bound {control.accuracy.low:.0%})")
    return INCONCLUSIVE, (f"the same check cannot tell the base model from Claude either "
                          f"({control.accuracy.value:.0%} [{control.accuracy.low:.0%}, {control.accuracy.high:.0%}])")

