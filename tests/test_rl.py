"""The RL phase: real GRPO/RLOO steps on a tiny Llama with the real weighted reward and the real
parser. The reward rises when one tool plan is clearly best; the KL reference is the SFT model
(the new adapter disabled), not the untuned base; a killed run resumes at the same total steps;
the agent records runs (start from the latest SFT run, resume after a stop) and ``ccrl train
--phase rl`` / ``--phase ppo`` work end to end.

The tiny model uses a small byte-level BPE vocabulary (1,000 tokens) trained here on the plans
and the chat template, so that a generation step costs milliseconds: GRPO samples every token
of every completion.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import trl  # noqa: E402,F401  (the [train] extra is part of the test environment: missing, this fails)

import torch  # noqa: E402

from ccrl.trainers import conversation as conv  # noqa: E402
from ccrl.trainers import reward as R  # noqa: E402
from ccrl.trainers.base_models import build_tiny_llama  # noqa: E402
from ccrl.trainers.chat_templates import attach_template, load_template, read_template_info, save_template  # noqa: E402
from ccrl.trainers.signals import extract_signals  # noqa: E402
from ccrl.trainers.rl import (  # noqa: E402
    WHAT_RUNS,
    RLConfig,
    RLError,
    build_trainer,
    episode_rows,
    resolve_start,
    train_rl,
)
from ccrl.trainers.sft import last_complete_checkpoint, run_dir_is_locked  # noqa: E402

torch.set_num_threads(1)  # the machine is shared: one core per test process
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def call(name: str, **args) -> dict:
    return {"type": "function", "function": {"name": name, "arguments": json.dumps(args)}}


READ = call("Read", file_path="a.py")
EDIT = call("Edit", file_path="a.py", old_string="1", new_string="2")
# Claude's plan reads the file before editing it; the other plan edits blind (constraint
# adherence 0, half the tool sequence, less exploration): total reward 1.0 against 0.5.
GOOD = conv.render_workflow(["Read a.py then fix it."], [conv.PlanStep("Look.", [READ]), conv.PlanStep("Fix.", [EDIT])], "Done.")
BLIND = conv.render_workflow(["Read a.py then fix it."], [conv.PlanStep("Fix.", [EDIT])], "Done.")
PROMPT = [{"role": "system", "content": "Plan."}, {"role": "user", "content": "Fix a.py"}]
# The same two behaviours as single decisions in the trajectory format (text, then the calls), what
# a model fine-tuned on trajectories writes for a plan prompt: no section, so the format costs
# half (reward.FORMAT_FLOOR); reading first scores 0.5, editing blind about half of that.
LOOK = conv.render_assistant_text({"role": "assistant", "content": "Read a.py before fixing it.", "tool_calls": [READ, EDIT]})
RUSH = conv.render_assistant_text({"role": "assistant", "content": "Fix a.py right away.", "tool_calls": [EDIT]})


def prompt_row(trace_id: int, prompt=PROMPT, reference: str = GOOD) -> dict:
    """A row of the RL prompt set exactly as the dataset builder writes it."""
    signals = extract_signals(conv.workflow_to_trace(conv.parse_workflow(reference)))
    messages = [{"role": m["role"], "content": m["content"], "tool_calls": None, "tool_call_id": None, "name": None}
                for m in prompt]
    return {"prompt": messages, "reference_completion": reference, "reference_signals": json.dumps(signals),
            "reference_tool_sequence": signals["tool_sequence"], "trace_id": trace_id, "session_id": "s",
            "parent_id": None, "tools": "[]"}


def write_prompts(path: Path, n_train: int = 1, n_eval: int = 1) -> Path:
    from datasets import Dataset, DatasetDict

    train = [prompt_row(i) for i in range(n_train)]
    evals = [prompt_row(100 + i) for i in range(n_eval)]
    DatasetDict(train=Dataset.from_list(train), eval=Dataset.from_list(evals)).save_to_disk(str(path))
    return path


def small_tokenizer(out: Path) -> Path:
    """A byte-level BPE tokenizer with ChatML's special tokens (decodes any text exactly)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    corpus = [GOOD, BLIND, LOOK, RUSH, "Plan.", "Fix a.py", load_template("chatml"), "You are a coding agent. Fix test"]
    tk.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=1000, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>").save_pretrained(str(out))
    return out


def warm_up(model_dir: Path, out: Path, steps: int = 300, completions: tuple[str, ...] = (GOOD, BLIND)) -> Path:
    """The start model for the rising-reward tests: the tiny model trained (all weights, plain
    AdamW) to write both completions for the prompt, so that GRPO has two to choose between."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    attach_template(tokenizer, "chatml")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    batches = []
    prompt_ids = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    for completion in completions:
        ids = tokenizer.apply_chat_template(PROMPT + [{"role": "assistant", "content": completion}], tokenize=True,
                                            return_dict=True)["input_ids"]
        batches.append((torch.tensor([ids]), torch.tensor([[-100] * len(prompt_ids) + ids[len(prompt_ids):]])))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = sum(model(input_ids=i, labels=lab).loss for i, lab in batches) / len(batches)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.save_pretrained(str(out))
    save_template(tokenizer, "chatml", out)
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("rl-models")
    tiny = build_tiny_llama(root / "tiny", small_tokenizer(root / "tok"), hidden_size=64, intermediate_size=128,
                            num_layers=2, num_heads=2, num_kv_heads=1)
    return {"tiny": tiny, "root": root}


@pytest.fixture(scope="module")
def warm(models) -> Path:
    return warm_up(models["tiny"], models["root"] / "warm")


@pytest.fixture(scope="module")
def warm_decisions(models) -> Path:
    """SFT in the trajectory format: the tiny model writes single decisions, never a plan."""
    return warm_up(models["tiny"], models["root"] / "warm-decisions", completions=(LOOK, RUSH))


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> Path:
    return write_prompts(tmp_path_factory.mktemp("rl-data") / "rl_prompts")


def quick(**overrides) -> RLConfig:
    """Settings that keep a run to seconds on one core."""
    values = dict(episodes=4, num_generations=2, prompts_per_step=2, max_completion_length=32, eval_prompts=0,
                  merge=False, save_steps=100, cpu_threads=1, lora_r=8, lora_alpha=16)
    values.update(overrides)
    return RLConfig(**values)


# --- configuration ----------------------------------------------------------------------------


def test_defaults_follow_the_design_and_reject_bad_settings():
    config = RLConfig()
    assert (config.algorithm, config.episodes, config.learning_rate) == ("grpo", 100, 1.4e-5)
    assert config.beta > 0 and config.num_generations is None and config.lora_dropout == 0.0
    assert config.weights == R.RewardWeights() and config.weights.as_list() == [0.25, 0.20, 0.20, 0.15, 0.20]
    assert RLConfig.from_dict(config.to_dict()) == config
    with pytest.raises(RLError, match="unknown RL setting.*num_episodes"):
        RLConfig.from_dict({"num_episodes": 8})
    with pytest.raises(RLError, match="unknown RL algorithm 'ppo'"):
        RLConfig(algorithm="ppo")
    with pytest.raises(RLError, match="at least 2"):
        RLConfig(num_generations=1)
    with pytest.raises(RLError, match="unknown reward component"):
        RLConfig(reward_weights={"constraint": 1.0})
    assert "GRPO" in WHAT_RUNS and "no PPO trainer" in WHAT_RUNS


def test_episodes_draw_every_prompt_equally_often_in_a_seeded_order():
    order = episode_rows(3, 10, seed=1)
    assert len(order) == 10 and sorted(order[:9]) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert order == episode_rows(3, 10, seed=1) and order != episode_rows(3, 10, seed=2)


# --- the reward rises -------------------------------------------------------------------------------


def test_grpo_raises_the_reward_when_one_plan_is_clearly_best(warm, prompts, tmp_path):
    """GRPO with the real weighted reward and parser moves the warmed-up model from editing
    blind towards reading first: the mean training reward of the last steps is above that of
    the first steps, and the held-out reward after the run is above the one before."""
    events = []
    out = tmp_path / "run"
    config = RLConfig(episodes=24, num_generations=4, prompts_per_step=2, completions_per_forward=4,
                      learning_rate=2e-3, max_completion_length=128,
                      eval_prompts=1, eval_generations=8, merge=True, save_steps=6, cpu_threads=1, lora_r=8, lora_alpha=16)
    assert R.total_reward(R.score_components(GOOD, R.make_reference(prompt_row(0)["reference_signals"]))) == 1.0
    assert R.total_reward(R.score_components(BLIND, R.make_reference(prompt_row(0)["reference_signals"]))) == pytest.approx(0.5)
    result = train_rl(prompts, out, warm, config, emit=events.append, progress_bar=False)
    m = result.metrics
    assert (m["algorithm"], m["global_step"], m["max_steps"], m["episodes"], m["completions"]) == ("grpo", 12, 12, 24, 96)
    assert m["device"] == ("cuda" if torch.cuda.is_available() else "cpu") and m["num_generations"] == 4 and m["prompts"] == 1 and m["heldout_prompts"] == 1
    assert m["completions_per_forward"] == 4

    rewards = [e["reward"] for e in events if e["event"] == "train.progress"]
    assert len(rewards) == 12
    first, last = sum(rewards[:4]) / 4, sum(rewards[-4:]) / 4
    assert last > first + 0.05, rewards
    assert m["heldout_reward_after"] > m["heldout_reward_before"], (m["heldout_reward_before"], m["heldout_reward_after"])

    # Progress: every step's total and components (TRL's rewards/<name>/mean) and the KL term.
    progress = [e for e in events if e["event"] == "train.progress"]
    assert [e["step"] for e in progress] == list(range(1, 13)) and all(e["phase"] == "rl" for e in progress)
    assert all(set(R.COMPONENTS) <= set(e) and "kl" in e for e in progress)
    # The reward curve: JSON (total, per component, held-out before/after) and PNG.
    curve = json.loads((out / "reward_curve.json").read_text())
    assert [p["reward"] for p in curve["total"]] == pytest.approx(rewards)
    assert set(curve["components"]) == set(R.COMPONENTS) and all(len(v) == 12 for v in curve["components"].values())
    assert curve["heldout"]["before"]["reward"] == m["heldout_reward_before"]
    assert curve["heldout"]["after"]["components"] == m["heldout_components_after"]
    assert (out / "reward_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    heldout = json.loads((out / "heldout.json").read_text())
    assert len(heldout["before"]["samples"]) == len(heldout["after"]["samples"]) == 8
    # A new adapter on the start model, with the template; the merged model for export.
    adapter = json.loads((out / "final" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(warm) and adapter["r"] == 8
    assert read_template_info(out / "final")["name"] == "chatml"
    assert (out / "merged" / "model.safetensors").is_file() and read_template_info(out / "merged")["name"] == "chatml"
    assert last_complete_checkpoint(out).name == "checkpoint-12"
    assert json.loads((out / "metrics.json").read_text())["metrics"]["global_step"] == 12
    assert (out.stat().st_mode & 0o777) == 0o700
    assert ((out / "final" / "adapter_model.safetensors").stat().st_mode & 0o777) == 0o600
    assert not run_dir_is_locked(out)


def test_grpo_raises_the_reward_of_the_decisions_sft_taught(warm_decisions, prompts, tmp_path):
    """The demo's situation: SFT taught single decisions, RL asks for plans. Every completion
    scores above 0 (no section costs half, it does not erase the signal), the groups have a
    reward spread, and GRPO moves the model from editing blind towards reading first."""
    ref = R.make_reference(prompt_row(0)["reference_signals"], GOOD, PROMPT)
    look, rush = (R.total_reward(R.score_components(t, ref)) for t in (LOOK, RUSH))
    assert look == pytest.approx(R.FORMAT_FLOOR) and 0 < rush < look - 0.2
    events = []
    config = RLConfig(episodes=24, num_generations=4, prompts_per_step=2, completions_per_forward=4,
                      learning_rate=2e-3, max_completion_length=64, eval_prompts=1, eval_generations=8,
                      merge=False, save_steps=100, cpu_threads=1, lora_r=8, lora_alpha=16)
    m = train_rl(prompts, tmp_path / "run", warm_decisions, config, emit=events.append, progress_bar=False).metrics
    assert m["heldout_reward_before"] > 0  # where SFT left it: not zero
    rewards = [e["reward"] for e in events if e["event"] == "train.progress"]
    first, last = sum(rewards[:4]) / 4, sum(rewards[-4:]) / 4
    assert last > first + 0.03, rewards
    assert m["heldout_reward_after"] > m["heldout_reward_before"], (m["heldout_reward_before"], m["heldout_reward_after"])
    # Groups without spread are counted from TRL's per-step share, step by step and in all.
    shares = [e["frac_reward_zero_std"] for e in events if e["event"] == "train.progress"]
    assert len(shares) == 12 and all(s in (0.0, 0.5, 1.0) for s in shares)  # 2 groups a step
    assert m["reward_groups"] == 24 and m["zero_spread_groups"] == round(sum(shares) * 2) < 24
    assert m["frac_reward_zero_std"] == pytest.approx(m["zero_spread_groups"] / 24)
    curve = json.loads((tmp_path / "run" / "reward_curve.json").read_text())
    assert [p["share"] for p in curve["zero_spread"]] == shares
    # The fixed plan (the training split's most common completion, cut at the completion length
    # as the model's are) is scored on the same prompts.
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(warm_decisions))
    cut = tokenizer.decode(tokenizer(GOOD, add_special_tokens=False)["input_ids"][:64])
    assert m["heldout_reward_fixed_plan"] == pytest.approx(R.score_rows([cut], [ref])["reward"])


def test_the_fixed_plan_is_cut_like_the_models_completions(models):
    from transformers import AutoTokenizer

    from ccrl.trainers.rl import fixed_plan_reward

    rows = [prompt_row(0), prompt_row(1, reference=BLIND), prompt_row(2)]
    held_out = [prompt_row(9)]
    whole = fixed_plan_reward(rows, held_out, R.RewardWeights())
    assert whole["reward"] == 1.0 and whole["prompts"] == 1  # GOOD, the most common, is Claude's own plan here
    tokenizer = AutoTokenizer.from_pretrained(str(models["tiny"]))
    cut = fixed_plan_reward(rows, held_out, R.RewardWeights(), tokenizer=tokenizer, max_tokens=12)
    assert cut["reward"] < whole["reward"]
    assert fixed_plan_reward(rows, [], R.RewardWeights()) is None


def test_groups_without_reward_spread_are_counted(models, prompts, tmp_path):
    """An untrained model writes nothing the reward can read: every group has zero spread, the
    run's metrics count all of them and a notice says that the adapter learned nothing."""
    events = []
    m = train_rl(prompts, tmp_path / "run", models["tiny"], quick(episodes=4), emit=events.append,
                 progress_bar=False).metrics
    assert (m["reward_groups"], m["zero_spread_groups"], m["frac_reward_zero_std"]) == (4, 4, 1.0)
    assert any(e["event"] == "notice" and "All 4 prompt groups" in e["message"] for e in events)
    curve = json.loads((tmp_path / "run" / "reward_curve.json").read_text())
    assert [p["share"] for p in curve["zero_spread"]] == [1.0, 1.0]


def test_zero_spread_counts_follow_the_logging_interval():
    from ccrl.trainers.rl import zero_spread_groups

    # Logged every 2 steps of 4 groups: each share covers 8 groups.
    history = [{"step": 2, "reward": 0.1, "frac_reward_zero_std": 0.25}, {"step": 2, "train_runtime": 1.0},
               {"step": 4, "reward": 0.2, "frac_reward_zero_std": 0.5}, {"step": 5, "reward": 0.2, "frac_reward_zero_std": 1.0}]
    assert zero_spread_groups(history, 4) == {"frac_reward_zero_std": pytest.approx(10 / 20), "zero_spread_groups": 10,
                                              "reward_groups": 20}
    assert zero_spread_groups([{"step": 1, "reward": 0.0}], 4) == {"frac_reward_zero_std": None, "zero_spread_groups": 0,
                                                                   "reward_groups": 0}


def test_rloo_is_selectable(models, prompts, tmp_path):
    result = train_rl(prompts, tmp_path / "run", models["tiny"], quick(algorithm="rloo", episodes=2),
                      progress_bar=False, emit=lambda e: None)
    assert result.metrics["algorithm"] == "rloo" and result.metrics["global_step"] == 1
    # The default: the whole group per pass on CUDA, one completion per pass on a CPU.
    expected = result.metrics["num_generations"] if torch.cuda.is_available() else 1
    assert result.metrics["completions_per_forward"] == expected
    assert len(json.loads((tmp_path / "run" / "reward_curve.json").read_text())["total"]) == 1


# --- the KL reference is the SFT model --------------------------------------------------------------


def _sft_adapter(base: Path, out: Path) -> Path:
    """An SFT run's adapter folder (``final/``): a LoRA adapter with non-zero weights, the
    tokenizer and the training template."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(base)),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    torch.manual_seed(3)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    model.save_pretrained(str(out))
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    save_template(tokenizer, attach_template(tokenizer, "chatml").name, out)
    return out


def test_the_kl_reference_is_the_sft_model_not_the_untuned_base(models, prompts, tmp_path):
    from datasets import load_from_disk
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ccrl.trainers.base_models import load_for_training
    from ccrl.trainers.rl import _trainer_args

    out = tmp_path / "run"
    out.mkdir()
    adapter = _sft_adapter(models["tiny"], tmp_path / "sft-final")
    start = resolve_start(adapter, out, "auto")
    assert start == str(out / "start") and (out / "start" / "config.json").is_file()
    assert resolve_start(out / "start", out, "auto") == str(out / "start")  # a full model is used as it is

    config = quick()
    model, tokenizer = load_for_training(start, four_bit=False)
    attach_template(tokenizer)
    episodes = load_from_disk(str(prompts))["train"]
    args = _trainer_args(config, out, cuda=False, max_steps=1, num_generations=2, max_completion_length=8, progress_bar=False)
    trainer = build_trainer(model, tokenizer, episodes, args, config, [], progress_bar=False)
    policy = trainer.model
    assert isinstance(policy, PeftModel) and trainer.ref_model is None and trainer.beta == config.beta > 0
    assert all("lora_" in n for n, p in policy.named_parameters() if p.requires_grad)

    ids = torch.tensor([AutoTokenizer.from_pretrained(start)("Read a.py then fix it.")["input_ids"]])
    sft = AutoModelForCausalLM.from_pretrained(start).eval()(input_ids=ids).logits
    untuned = AutoModelForCausalLM.from_pretrained(str(models["tiny"])).eval()(input_ids=ids).logits
    assert (sft - untuned).abs().max() > 1e-2  # the SFT adapter really changed the model
    with torch.no_grad():
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)  # as if RL had trained the new adapter
        policy.eval()
        trained = policy(input_ids=ids).logits
        with policy.disable_adapter():  # what TRL does for the reference log-probs
            reference = policy(input_ids=ids).logits
    assert (trained - sft).abs().max() > 1e-2
    # Exact on a CPU (float32); on CUDA the policy computes in bfloat16, so within its rounding,
    # and still far closer to the SFT model than to the untuned base.
    exact = reference.dtype == torch.float32
    reference = reference.float().to(sft.device)
    assert torch.allclose(reference, sft, atol=1e-5 if exact else 5e-2)
    assert (reference - sft).abs().max() < (reference - untuned).abs().max() / 4


# --- resume, bad input ------------------------------------------------------------------------------


def _has_checkpoint(out: Path) -> bool:
    for state in out.glob("checkpoint-*/trainer_state.json"):
        try:
            json.loads(state.read_text())
            return True
        except ValueError:
            continue
    return False


def test_resume_after_sigkill_reaches_the_same_total_steps(models, prompts, tmp_path):
    out = tmp_path / "run"
    config = quick(episodes=16, max_completion_length=64, save_steps=1)  # 8 steps, a checkpoint after each
    cmd = [sys.executable, "-m", "ccrl.trainers.rl", str(prompts), str(out), str(models["tiny"]), json.dumps(config.to_dict())]
    proc = subprocess.Popen(cmd, env=SUBPROCESS_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600  # an upper bound for a slow, busy machine, not a timing
    try:
        while not _has_checkpoint(out):  # read-only polling: never disturb the writer
            assert proc.poll() is None, f"trainer ended before a checkpoint: {proc.stderr.read()[-2000:]}"
            assert time.monotonic() < deadline, "no checkpoint within 600 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    killed_at = int(last_complete_checkpoint(out).name.split("-")[1])
    assert killed_at < 8 and not (out / "final").exists() and not run_dir_is_locked(out)

    events = []
    result = train_rl(prompts, out, models["tiny"], config, emit=events.append, progress_bar=False)
    assert result.metrics["resumed_from"] == f"checkpoint-{killed_at}"
    assert (result.metrics["global_step"], result.metrics["max_steps"]) == (8, 8)
    assert {"event": "notice", "message": f"Resuming from checkpoint-{killed_at}."} in events
    steps = [p["step"] for p in json.loads((out / "reward_curve.json").read_text())["total"]]
    assert steps == list(range(1, 9))  # each step logged once across both processes


def test_bad_inputs_are_clear_errors(models, prompts, tmp_path):
    from datasets import Dataset, DatasetDict

    with pytest.raises(RLError, match="cannot load the RL prompt set"):
        train_rl(tmp_path / "missing", tmp_path / "o1", models["tiny"], quick())
    row = {k: v for k, v in prompt_row(1).items() if k != "reference_signals"}
    DatasetDict(train=Dataset.from_list([row])).save_to_disk(str(tmp_path / "nosignals"))
    with pytest.raises(RLError, match="lacks the column.*reference_signals"):
        train_rl(tmp_path / "nosignals", tmp_path / "o2", models["tiny"], quick())
    with pytest.raises(RLError, match="completions_per_forward=3 must divide num_generations x prompts_per_step = 4"):
        train_rl(prompts, tmp_path / "o6", models["tiny"], quick(completions_per_forward=3))
    with pytest.raises(RLError, match="every RL prompt is longer than max_prompt_length=4"):
        train_rl(prompts, tmp_path / "o3", models["tiny"], quick(max_prompt_length=4))
    train_rl(prompts, tmp_path / "o4", models["tiny"], quick(episodes=2), progress_bar=False, emit=lambda e: None)
    with pytest.raises(RLError, match="other inputs"):
        train_rl(prompts, tmp_path / "o4", models["tiny"], quick(episodes=2, learning_rate=1e-3))
    if not torch.cuda.is_available():
        with pytest.raises(RLError, match="needs a CUDA GPU"):
            train_rl(prompts, tmp_path / "o5", models["tiny"], quick(quant="4bit"))
        assert not (tmp_path / "o5").exists()


# --- the agent's runs and `ccrl train --phase rl` -----------------------------------------------------


def _sft_dataset(path: Path) -> Path:
    """A dataset version folder: SFT conversations (both plans) and the RL prompt set."""
    from datasets import Dataset, DatasetDict

    rows = [{"messages": PROMPT + [{"role": "assistant", "content": c}], "format": "workflow", "trace_id": i}
            for i, c in enumerate((GOOD, BLIND, GOOD, BLIND))]
    DatasetDict(train=Dataset.from_list(rows[:3]), eval=Dataset.from_list(rows[3:])).save_to_disk(str(path))
    write_prompts(path / "rl_prompts", n_train=2, n_eval=1)
    return path


def _add_version(number: int, path: Path) -> int:
    from ccrl.agent.store.db import session_scope
    from ccrl.agent.store.models import DatasetVersion

    with session_scope() as session:
        version = DatasetVersion(number=number, path=str(path))
        session.add(version)
        session.flush()
        return version.id


AGENT_OPTIONS = {"episodes": 4, "num_generations": 2, "max_completion_length": 24, "eval_generations": 2, "cpu_threads": 1}


def test_agent_runs_rl_on_the_latest_sft_model_and_resumes_it(ccrl_home, models, tmp_path):
    from ccrl.agent.core.config import get_settings
    from ccrl.agent.training.training import TrainingError, TrainingStopped, resumable_run, run_training

    with pytest.raises(TrainingError, match="no completed SFT run"):
        run_training("rl")
    version_id = _add_version(1, _sft_dataset(tmp_path / "v1"))
    sft = run_training("sft", base_model=str(models["tiny"]), max_steps=1, progress_bar=False, emit=lambda e: None)
    with pytest.raises(TrainingError, match="--from-base and --base-model choose where --phase sft starts"):
        run_training("rl", base_model=str(models["tiny"]))
    with pytest.raises(TrainingError, match="unknown SFT setting"):
        run_training("sft", options={"episodes": 3})
    with pytest.raises(TrainingError, match="unknown RL setting"):
        run_training("rl", options={"episode": 3})

    # A stop request after the first step: the run is interrupted, then resumed by the next start.
    with pytest.raises(TrainingStopped, match="step 1 of 2"):
        run_training("rl", options=AGENT_OPTIONS, progress_bar=False, emit=lambda e: None, should_stop=lambda: True)
    interrupted = resumable_run(get_settings(), "rl", None)
    assert interrupted is not None and interrupted.status == "interrupted"
    events = []
    run = run_training("rl", options={"episodes": 50}, progress_bar=False, emit=events.append)
    assert run.id == interrupted.id and run.status == "completed" and run.phase == "rl"
    assert any("Resuming RL run" in e.get("message", "") for e in events)
    m = run.metrics
    assert (m["resumed_from"], m["global_step"], m["max_steps"], m["episodes"]) == ("checkpoint-1", 2, 2, 4)
    # Started from the SFT run's merged model; recorded with its dataset version and parent.
    assert run.parent_run_id == sft.id and run.dataset_version_id == version_id
    assert run.config["start_model"] == str(Path(sft.output_dir) / "merged")
    assert run.config["prompts_path"] == str(tmp_path / "v1" / "rl_prompts")
    assert run.base_model == f"SFT run {sft.id} ({models['tiny']})"
    assert Path(run.output_dir) == ccrl_home / "models" / "rl" / f"run-{run.id}"
    assert run.config["rl"]["reward_weights"] == R.RewardWeights.from_settings(get_settings().reward).as_dict()
    assert m["heldout_prompts"] == 1 and m["heldout_reward_before"] is not None and m["heldout_reward_after"] is not None
    assert Path(m["artifacts"]["merged"], "model.safetensors").is_file()
    assert Path(m["artifacts"]["reward_curve_png"]).is_file()


def test_ccrl_train_phase_rl_and_ppo(ccrl_home, models, tmp_path):
    from typer.testing import CliRunner

    from ccrl.agent.cli import app
    from ccrl.agent.training.training import run_training

    runner = CliRunner()
    help_text = " ".join(runner.invoke(app, ["train", "--help"]).output.split())
    assert "GRPO" in help_text and "group-relative advantages instead of a value model" in help_text
    assert "no PPO trainer" in help_text and "--phase ppo" in help_text
    assert runner.invoke(app, ["train", "--phase", "sft", "--episodes", "3"]).exit_code == 2
    assert runner.invoke(app, ["train", "--phase", "rl", "--algorithm", "ppo"]).exit_code == 2
    no_sft = runner.invoke(app, ["train", "--phase", "ppo"])
    assert no_sft.exit_code == 1 and "no completed SFT run" in no_sft.stderr and "Traceback" not in no_sft.output

    _add_version(1, _sft_dataset(tmp_path / "v1"))
    run_training("sft", base_model=str(models["tiny"]), max_steps=1, progress_bar=False, emit=lambda e: None)
    ok = runner.invoke(app, ["train", "--phase", "ppo", "--episodes", "2", "--num-generations", "2", "--json"])
    assert ok.exit_code == 0, ok.stderr
    run = json.loads(ok.stdout)
    assert run["phase"] == "rl" and run["status"] == "completed" and run["metrics"]["algorithm"] == "grpo"
    assert run["config"]["rl"]["episodes"] == 2 and run["metrics"]["num_generations"] == 2
    events = [json.loads(line) for line in ok.stderr.splitlines() if line.startswith("{")]
    assert any(e["event"] == "start" and e["phase"] == "rl" and e["algorithm"] == "grpo" for e in events)
    assert any(e["event"] == "train.progress" and "reward" in e for e in events)
    # Without --json: the summary table (rendered here from the stored row).
    from rich.console import Console

    from ccrl.agent.cli import train as train_cli
    from ccrl.agent.store.db import session_scope
    from ccrl.agent.store.models import TrainingRun

    with session_scope() as session:
        row = session.get(TrainingRun, run["id"])
        session.expunge(row)
    console = Console(record=True, width=200)
    original, train_cli._out = train_cli._out, console
    try:
        train_cli._summary(row)
    finally:
        train_cli._out = original
    text = console.export_text()
    before, after = run["metrics"]["heldout_reward_before"], run["metrics"]["heldout_reward_after"]
    assert f"RL run {row.id} (GRPO): completed" in text and f"{before:.3f} before → {after:.3f} after" in text
