import csv
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from saesteer.data import Record
from saesteer.errors import SaesteerError
from saesteer.evaluate import capability_ll
from saesteer.evaluate import capability_tasks as fmt
from saesteer.evaluate.capability import CapabilityConfig, evaluate_capability
from saesteer.evaluate.capability_summary import mean_interval, summarise
from saesteer.evaluate.capability_ll import encode_pair, loglikelihoods
from saesteer.files import read_json, read_jsonl
from saesteer.steer import InterventionSpec, FileRef, SteeringSpec
from tests.tiny import save_tiny_model, tiny_model

SUBJECTS = ("astronomy", "high_school_biology")


def mmlu_records(split: str, n: int) -> list[Record]:
    out = []
    for s in SUBJECTS:
        for i in range(n):
            out.append(Record(id=f"mmlu-{split}-{s}-{i}", prompt=f"Question {i} about the {s.replace('_', ' ')}?",
                              source="mmlu", category=s, choices=["the sea", "the fox", "the dog", "a poem"],
                              correct=[(i + len(s)) % 4]))
    return out


RECORDS = {
    "mmlu": mmlu_records("test", 3),
    "mmlu:dev": mmlu_records("dev", 5),
    "truthfulqa": [Record(id=f"truthfulqa-{i}", prompt=q, source="truthfulqa", choices=[a, b, "I have no comment."],
                          correct=[0], meta={"mc2_choices": [a, "It is true.", b, "No."], "mc2_correct": [0, 1]})
                   for i, (q, a, b) in enumerate([("What does the fox do?", "It jumps.", "It sleeps."),
                                                  ("Is the sea blue?", "Often, yes.", "Never."),
                                                  ("What is 2+2?", "4", "5")])],
    "gsm8k": [Record(id=f"gsm8k-{i}", prompt=q, source="gsm8k", reference=ref)
              for i, (q, ref) in enumerate([("Tom has 3 eggs and buys 2 more. How many?", "5"),
                                            ("A pie costs $4. What do 3 pies cost?", "12"),
                                            ("How many legs do 2 dogs have?", "8")])],
}
ALL = ("mmlu_gen", "mmlu_ll", "truthfulqa_mc1", "truthfulqa_mc2", "gsm8k", "gsm8k_chat")


def small_config(**kw) -> CapabilityConfig:
    base = dict(tasks=ALL, mmlu_shots=1, gsm8k_shots=1, mmlu_max_new_tokens=6, gsm8k_max_new_tokens=6,
                judge="auto", batch_size=4, chunk=2)
    base.update(kw)
    return CapabilityConfig(**base)


@pytest.fixture(scope="module")
def lm():
    return tiny_model("llama")


# --- formats and scoring rules -----------------------------------------------------------------

@pytest.mark.parametrize("text, letter", [
    ("ANSWER: C", "C"), ("ANSWER: C\nBecause the sea is blue.", "C"), ("Answer: (B)", "B"),
    ("answer is D.", "D"), ("**ANSWER:** A", "A"), ("ANSWER: $B", "B"), ("The answer is: [C]", "C"),
    ("B) the fox", "B"), ("(D)", "D"), ("  A.", "A"), ("C", "C"),
    ("Sure! ANSWER: D and then ANSWER: A", "D"),
    ("ANSWER: Cannot say", None), ("A good question. I think so.", None), ("I'm sorry, I can't help.", None),
    ("", None), ("ANSWER: E", None), ("answer: c", None),
])
def test_extract_letter(text, letter):
    assert fmt.extract_letter(text) == letter


def test_answer_given_waits_for_the_letter_to_end():
    assert not fmt.answer_given("ANSWER: C")  # might still become "Cannot"
    assert fmt.answer_given("ANSWER: C\n") and fmt.answer_given("ANSWER: C.")
    assert not fmt.answer_given("ANSWER: Can")


@pytest.mark.parametrize("text, number, strict", [
    ("5 + 4 = 9. The answer is 9.", "9.", "9"),
    ("She pays $1,234 in total. The answer is 1,234.", "1,234.", "1,234"),
    ("First 3 then 18.00", "18.00", None),
    ("no digits here", None, None),
    ("It is -7", "-7", None),
])
def test_extract_number(text, number, strict):
    assert fmt.extract_number(text) == number
    assert fmt.extract_strict(text) == strict


def test_number_matching_normalises_like_lm_eval():
    assert fmt.number_matches("1,234.", "1234") and fmt.number_matches("$12", "12")
    assert not fmt.number_matches("18.00", "18")  # lm-eval's exact match is textual
    assert not fmt.number_matches(None, "3")


def test_mc2_formula_on_known_logits():
    lps = [math.log(0.5), math.log(0.3), math.log(0.2)]
    assert fmt.mc2_score(lps, [0]) == pytest.approx(0.5)
    assert fmt.mc2_score(lps, [0, 2]) == pytest.approx(0.7)
    assert fmt.mc2_score([x - 3 for x in lps], [1]) == pytest.approx(0.3)  # unnormalised log-probs
    # lm-eval's numpy formula gives the same number
    import numpy as np
    p = np.exp(np.array(lps)) / np.exp(np.array(lps)).sum()
    assert fmt.mc2_score(lps, [1, 2]) == pytest.approx(float(p[[1, 2]].sum()))
    assert fmt.mc2_score([-2000.0, -2001.0], [0]) == pytest.approx(1 / (1 + math.exp(-1)))  # no 0/0


def test_mean_interval():
    s = mean_interval([0.0, 1.0] * 50)
    assert s["mean"] == 0.5 and s["ci95"][0] == pytest.approx(0.5 - 1.96 * s["sd"] / 10)
    assert mean_interval([0.3])["ci95"] == [0.0, 1.0]


def test_prompts():
    r = RECORDS["mmlu"][0]
    ctx = fmt.mmlu_ll_context(r.category, RECORDS["mmlu:dev"][:1], r)
    assert ctx.startswith("The following are multiple choice questions (with answers) about astronomy.\n\n")
    assert ctx.endswith("\nA. the sea\nB. the fox\nC. the dog\nD. a poem\nAnswer:")
    conv = fmt.mmlu_gen_conversation(r.category, RECORDS["mmlu:dev"][:2], r)
    assert [m["role"] for m in conv] == ["user", "assistant", "user", "assistant", "user"]
    assert conv[1]["content"] == f"ANSWER: {fmt.LETTERS[RECORDS['mmlu:dev'][0].correct[0]]}"
    assert "ANSWER: $LETTER" in conv[-1]["content"] and "D) a poem" in conv[-1]["content"]
    assert fmt.gsm8k_prompt("Q?").count("\nA: ") == 8 and fmt.gsm8k_prompt("Q?").endswith("Q: Q?\nA:")


def _lm_eval_tasks() -> Path:
    found = importlib.util.find_spec("lm_eval")
    if found is None or not found.submodule_search_locations:
        pytest.skip("lm-eval is not installed")
    return Path(list(found.submodule_search_locations)[0]) / "tasks"


def test_formats_match_lm_eval_task_files():
    """Our strings are the harness's templates rendered (read from its YAML, no import)."""
    import jinja2
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    tasks = _lm_eval_tasks()
    env = jinja2.Environment()
    mmlu = yaml.load((tasks / "mmlu/default/_default_template_yaml").read_text(), Loader=Loader)
    r = RECORDS["mmlu"][1]
    assert env.from_string(mmlu["doc_to_text"]).render(question=r.prompt + " ", choices=r.choices) == fmt.mmlu_question(r)
    desc = yaml.load((tasks / "mmlu/default/mmlu_high_school_biology.yaml").read_text(), Loader=Loader)["description"]
    assert fmt.mmlu_ll_context("high_school_biology", [], r).startswith(desc)
    tqa = yaml.load((tasks / "truthfulqa/truthfulqa_mc1.yaml").read_text(), Loader=Loader)
    assert env.from_string(tqa["doc_to_text"]).render(question="Why?") == fmt.truthfulqa_context("Why?")
    gsm = yaml.load((tasks / "gsm8k/gsm8k-cot.yaml").read_text(), Loader=Loader)
    assert [(s["question"], s["target"]) for s in gsm["fewshot_config"]["samples"]] == list(fmt.GSM8K_EXEMPLARS)
    assert gsm["doc_to_text"] == "Q: {{question}}\nA:" and tuple(gsm["generation_kwargs"]["until"]) == fmt.GSM8K_STOP


# --- log-likelihood ----------------------------------------------------------------------------

PREFIX = "The quick brown fox jumps over the lazy dog. " * 3
REQUESTS = [(PREFIX + "Q: what?\nA:", " yes"), (PREFIX + "Q: who is it\nA:", " the fox"),
            (PREFIX + "Q: what?\nA:", " no"), (PREFIX + "Q: why\nA: ", "maybe not at all"),
            ("Hi", " there")]


def test_encode_pair_moves_trailing_space_to_the_continuation(lm):
    ctx, cont = encode_pair(lm, "Q: why\nA: ", "maybe")
    ctx2, cont2 = encode_pair(lm, "Q: why\nA:", " maybe")
    assert (ctx, cont) == (ctx2, cont2)
    assert lm.tokenizer.decode(cont) == " maybe"


def test_loglikelihood_equals_manual_computation(lm):
    got = loglikelihoods(lm, REQUESTS, batch_size=3)
    for (context, continuation), result in zip(REQUESTS, got):
        ctx, cont = encode_pair(lm, context, continuation)
        with torch.no_grad():
            logits = lm.model(input_ids=torch.tensor([ctx + cont])).logits[0]
        lp = torch.log_softmax(logits.double(), -1)
        manual = sum(lp[len(ctx) - 1 + j, t].item() for j, t in enumerate(cont))
        greedy = all(lp[len(ctx) - 1 + j].argmax().item() == t for j, t in enumerate(cont))
        assert result.logprob == pytest.approx(manual, abs=1e-4)
        assert result.greedy == greedy and result.n_tokens == len(cont)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_batched_equals_unbatched_and_prefix_sharing(arch, monkeypatch):
    model = tiny_model(arch)
    reference = [r.logprob for r in loglikelihoods(model, REQUESTS, batch_size=1, share_prefix=False)]
    calls = []
    original = capability_ll._prefix_cache
    monkeypatch.setattr(capability_ll, "_prefix_cache", lambda m, p: calls.append(len(p)) or original(m, p))
    groups = ["g"] * 4 + ["other"]
    for batch_size in (2, 8):
        got = [r.logprob for r in loglikelihoods(model, REQUESTS, batch_size=batch_size, groups=groups)]
        assert got == pytest.approx(reference, abs=1e-4)
    assert calls and all(n >= capability_ll.MIN_SHARED_PREFIX for n in calls)


def test_loglikelihood_bad_input(lm):
    with pytest.raises(SaesteerError, match="group keys"):
        loglikelihoods(lm, REQUESTS, groups=["a"])
    with pytest.raises(SaesteerError, match="no tokens"):
        loglikelihoods(lm, [("Hi", "")])


# --- the evaluation ----------------------------------------------------------------------------

def test_evaluate_writes_items_summary_and_resumes(tmp_path, lm):
    out = tmp_path / "cap"
    config = small_config()
    summary = evaluate_capability(lm, out, config, records=RECORDS, progress=False)
    rows = read_jsonl(out / "items.jsonl")
    n = {"mmlu_gen": 6, "mmlu_ll": 6, "truthfulqa_mc1": 3, "truthfulqa_mc2": 3, "gsm8k": 3, "gsm8k_chat": 3}
    assert {t: sum(r["task"] == t for r in rows) for t in ALL} == n
    assert len({(r["task"], r["id"]) for r in rows}) == len(rows)
    for task in ALL:
        s = summary["tasks"][task]
        assert s["complete"] and s["n"] == n[task]
        lo, hi = s["score"]["ci95"]
        assert 0 <= lo <= s["score"]["value"] <= hi <= 1
    gen = summary["tasks"]["mmlu_gen"]
    assert set(gen["letters"]) == {"A", "B", "C", "D", "UNK"} and sum(v["k"] for v in gen["letters"].values()) == 6
    assert gen["refusal"]["n"] == 6 and set(gen["subjects"]) == set(SUBJECTS)
    assert all(len(r["logprobs"]) == 4 for r in rows if r["task"] == "mmlu_ll")
    assert all(0 <= r["score"] <= 1 for r in rows if r["task"] == "truthfulqa_mc2")
    run = read_json(out / "run.json")
    assert run["spec_hash"] is None and run["settings"]["mmlu_shots"] == 1 and set(run["tasks"]) == set(ALL)
    assert read_json(out / "summary.json")["scores"] == summary["scores"]

    # A killed run: a torn last line and missing rows. The rerun adds exactly the missing rows.
    lines = (out / "items.jsonl").read_text().splitlines()
    (out / "items.jsonl").write_text("\n".join(lines[:9]) + "\n" + lines[9][:15])
    again = evaluate_capability(lm, out, config, records=RECORDS, progress=False)
    rows2 = read_jsonl(out / "items.jsonl")
    assert sorted((r["task"], r["id"]) for r in rows2) == sorted((r["task"], r["id"]) for r in rows)
    assert {t: v["value"] for t, v in again["scores"].items()} == \
        pytest.approx({t: v["value"] for t, v in summary["scores"].items()})
    # A finished run is not redone; another task can be added to the same folder.
    evaluate_capability(lm, out, small_config(tasks=("mmlu_ll",)), records=RECORDS, progress=False)
    assert len(read_jsonl(out / "items.jsonl")) == len(rows)
    with pytest.raises(SaesteerError, match="different run"):
        evaluate_capability(lm, out, small_config(gsm8k_max_new_tokens=7), records=RECORDS, progress=False)


def test_limit_is_a_seeded_sample_shared_by_tasks(tmp_path, lm):
    config = small_config(tasks=("mmlu_ll", "mmlu_gen"), limit=4, seed=3, judge=None)
    evaluate_capability(lm, tmp_path / "a", config, records=RECORDS, progress=False)
    rows = read_jsonl(tmp_path / "a" / "items.jsonl")
    ll = [r["id"] for r in rows if r["task"] == "mmlu_ll"]
    assert len(ll) == 4 and ll == [r["id"] for r in rows if r["task"] == "mmlu_gen"]
    assert all("refusal" not in r for r in rows)


def test_bundled_tasks_run_offline_in_the_borrowed_formats(tmp_path, lm):
    config = small_config(tasks=("bundled_mc", "bundled_mc_ll", "bundled_math"), limit=3, judge=None,
                          mmlu_shots=1, gsm8k_shots=1, gsm8k_max_new_tokens=4)
    summary = evaluate_capability(lm, tmp_path / "b", config, progress=False)
    rows = read_jsonl(tmp_path / "b" / "items.jsonl")
    assert {t: sum(r["task"] == t for r in rows) for t in config.tasks} == dict.fromkeys(config.tasks, 3)
    mc = summary["tasks"]["bundled_mc"]
    assert "UNK" in mc["letters"] and "UNK" not in summary["tasks"]["bundled_mc_ll"]["letters"]
    assert all(r["n_shots"] == 1 for r in rows if r["task"].startswith("bundled_mc"))
    assert "strict_accuracy" in summary["tasks"]["bundled_math"]


def test_steering_changes_scores_and_comes_off(tmp_path, lm):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    save_file({"v": torch.randn(lm.d_model)}, str(tmp_path / "v.safetensors"))
    spec = SteeringSpec(interventions=[InterventionSpec(hook="model.layers.1", vector=FileRef("v.safetensors"),
                                                        op="add", value=40.0)], base_dir=tmp_path)
    config = small_config(tasks=("mmlu_ll", "truthfulqa_mc2"), judge=None)
    base = evaluate_capability(lm, tmp_path / "base", config, records=RECORDS, progress=False)
    steered = evaluate_capability(lm, tmp_path / "steered", config, spec, records=RECORDS, progress=False)
    again = evaluate_capability(lm, tmp_path / "again", config, records=RECORDS, progress=False)
    rows = {name: read_jsonl(tmp_path / name / "items.jsonl") for name in ("base", "steered", "again")}
    assert [r["logprobs"] for r in rows["base"]] == [r["logprobs"] for r in rows["again"]]
    changed = [a["logprobs"] != b["logprobs"] for a, b in zip(rows["base"], rows["steered"])]
    assert all(changed)
    assert steered["spec_hash"] == spec.hash() and all(r["spec_hash"] == spec.hash() for r in rows["steered"])
    assert base["spec_hash"] is None and again["scores"] == base["scores"]
    with pytest.raises(SaesteerError, match="spec_hash differs"):
        evaluate_capability(lm, tmp_path / "base", config, spec, records=RECORDS, progress=False)


def test_bad_config():
    with pytest.raises(SaesteerError, match="unknown capability task 'mmlu_zero'"):
        CapabilityConfig(tasks="mmlu_ll,mmlu_zero")
    with pytest.raises(SaesteerError, match="limit"):
        CapabilityConfig(limit=0)
    with pytest.raises(SaesteerError, match="mmlu_shots"):
        CapabilityConfig(mmlu_shots=6)


def test_summary_of_hand_made_rows():
    rows = [{"task": "mmlu_gen", "id": str(i), "subject": "x", "gold": "A", "pred": p, "correct": p == "A",
             "finish_reason": "early", "new_tokens": 3, "refusal": p == "U"} for i, p in enumerate("AACCU")]
    rows[-1]["pred"] = "UNK"
    s = summarise(rows, {"mmlu_gen": 6})["tasks"]["mmlu_gen"]
    assert s["accuracy"]["k"] == 2 and s["letters"]["C"]["k"] == 2 and s["letters"]["UNK"]["k"] == 1
    assert s["refusal"]["k"] == 1 and not s["complete"]


# --- CLI -----------------------------------------------------------------------------------------

def write_data_dir(root: Path) -> Path:
    """The registry's local layout (like shared/data) with the hand-written records."""
    for split, key in (("test", "mmlu"), ("dev", "mmlu:dev")):
        folder = root / "mmlu" / split
        folder.mkdir(parents=True)
        for s in SUBJECTS:
            with open(folder / f"{s}_{split}.csv", "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["question", "choice0", "choice1", "choice2", "choice3", "answer"])
                for r in RECORDS[key]:
                    if r.category == s:
                        w.writerow([r.prompt, *r.choices, r.correct[0]])
    (root / "truthfulqa").mkdir()
    (root / "truthfulqa" / "mc_task.json").write_text(json.dumps([
        {"question": r.prompt, "mc1_targets": {c: int(i in r.correct) for i, c in enumerate(r.choices)},
         "mc2_targets": {c: int(i in r.meta["mc2_correct"]) for i, c in enumerate(r.meta["mc2_choices"])}}
        for r in RECORDS["truthfulqa"]]))
    (root / "gsm8k").mkdir()
    (root / "gsm8k" / "test.jsonl").write_text("".join(
        json.dumps({"question": r.prompt, "answer": f"Work.\n#### {r.reference}"}) + "\n" for r in RECORDS["gsm8k"]))
    return root


def test_cli_contract_and_bad_input(tmp_path):
    model_dir = save_tiny_model(tmp_path / "model")
    data = write_data_dir(tmp_path / "data")
    env = {**os.environ, "SAESTEER_CACHE": str(tmp_path / "cache")}
    env.pop("SAESTEER_DATA", None)
    base = [sys.executable, "-m", "saesteer.cli", "eval", "capability", model_dir]
    ok = subprocess.run([*base, "--out", str(tmp_path / "out"), "--data-dir", str(data), "--limit", "2",
                         "--mmlu-shots", "1", "--gsm8k-shots", "0", "--mmlu-max-new-tokens", "4",
                         "--gsm8k-max-new-tokens", "4", "--batch-size", "2"],
                        env=env, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr[-2000:]
    summary = read_json(tmp_path / "out" / "summary.json")
    assert list(summary["tasks"]) == ["mmlu_gen", "mmlu_ll", "truthfulqa_mc1", "truthfulqa_mc2", "gsm8k"]
    assert all(s["n"] == 2 for s in summary["tasks"].values())
    assert "mmlu_ll: accuracy" in ok.stderr and "letters A=" in ok.stderr and ok.stdout == ""
    for args, message in ((["--tasks", "mmlu_ll,nope"], "unknown capability task 'nope'"),
                          (["--limit", "0"], "limit must be at least 1"),
                          (["--clamp", "3=5"], "feature edits need --sae")):
        bad = subprocess.run([*base, "--out", str(tmp_path / "bad"), "--data-dir", str(data), *args],
                             env=env, capture_output=True, text=True, timeout=120)
        assert bad.returncode == 2, bad.stderr
        assert message in bad.stderr and "Traceback" not in bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1


def test_progress_moves_per_item_not_per_chunk(tmp_path, lm, progress_bars):
    from saesteer.evaluate import capability

    bars = progress_bars(capability)
    config = small_config(tasks=("mmlu_ll", "truthfulqa_mc2", "gsm8k"), judge=None, chunk=64)
    evaluate_capability(lm, tmp_path / "cap", config, records=RECORDS)
    assert [bar.desc for bar in bars] == ["mmlu_ll", "truthfulqa_mc2", "gsm8k"]
    for bar in bars:   # log-likelihood items (several requests each) and generated items alike
        assert bar.updates == [1] * bar.total and bar.n == bar.total > 1


# --- the real model --------------------------------------------------------------------------------

@pytest.mark.slow
def test_smollm2_capability_smoke(tmp_path, smollm2):
    root = os.environ.get("SAESTEER_DATA")
    if not root or not (Path(root) / "mmlu").is_dir():
        pytest.skip("needs the MMLU/TruthfulQA/GSM8K files (SAESTEER_DATA)")
    config = CapabilityConfig(tasks=("mmlu_gen", "mmlu_ll", "truthfulqa_mc2", "gsm8k"), limit=2, gsm8k_shots=2,
                              gsm8k_max_new_tokens=48, mmlu_max_new_tokens=8)
    summary = evaluate_capability(smollm2, tmp_path / "cap", config, progress=False)
    rows = read_jsonl(tmp_path / "cap" / "items.jsonl")
    assert len(rows) == 8 and all(s["complete"] for s in summary["tasks"].values())
    # The instruct model follows the `ANSWER: X` format of its few-shot turns.
    assert all(r["pred"] in fmt.LETTERS for r in rows if r["task"] == "mmlu_gen")
    assert all(-30 < lp < 0 for r in rows if r["task"] == "mmlu_ll" for lp in r["logprobs"])


def test_a_gated_spec_takes_unflagged_chat_items_from_the_unsteered_run(tmp_path, lm):
    """Chat-generation items the gate leaves alone come from the unsteered run, and the rows equal
    a run that scored everything; log-likelihood items are always scored."""
    import statistics

    from safetensors.torch import save_file

    from saesteer.evaluate import capability
    from saesteer.evaluate.detector import detector_scores
    from saesteer.steer import ConditionSpec

    g = torch.Generator().manual_seed(0)
    save_file({"v": torch.randn(lm.d_model, generator=g), "c": torch.randn(lm.d_model, generator=g)},
              str(tmp_path / "v.safetensors"))

    def gated(threshold: float) -> SteeringSpec:
        return SteeringSpec(interventions=[InterventionSpec(hook="model.layers.1", vector=FileRef("v.safetensors", key="v"),
                                                            op="add", value=40.0)],
                            condition=ConditionSpec(detector="direction", hook="model.layers.1", pooling="mean",
                                                    threshold=threshold, vector=FileRef("v.safetensors", key="c")),
                            base_dir=tmp_path)

    config = small_config(tasks=("mmlu_gen", "gsm8k_chat", "mmlu_ll"))
    items = capability.task_items("mmlu_gen", config, capability.TaskData(RECORDS))
    prompts, system = capability.chat_prompts("mmlu_gen", items, config)
    spec = gated(statistics.median(detector_scores(lm, gated(0.0), prompts, system=system)))
    evaluate_capability(lm, tmp_path / "none", config, records=RECORDS, progress=False)
    full = evaluate_capability(lm, tmp_path / "full", config, spec, records=RECORDS, progress=False)
    reused = evaluate_capability(lm, tmp_path / "reused", config, spec, records=RECORDS, progress=False,
                                 unsteered=tmp_path / "none")

    def rows(name):
        return sorted(({k: v for k, v in r.items() if k != "spec_hash"} for r in read_jsonl(tmp_path / name / "items.jsonl")),
                      key=lambda r: (r["task"], r["id"]))

    assert rows("reused") == rows("full")
    assert reused["scores"] == full["scores"]
    flagged = {t: sum(r["steered"] for r in rows("full") if r["task"] == t) for t in ("mmlu_gen", "gsm8k_chat")}
    assert 0 < flagged["mmlu_gen"] < len(items)
    chat_items = sum(r["task"] != "mmlu_ll" for r in rows("full"))
    assert full["items_from_unsteered_run"] == 0
    assert reused["items_from_unsteered_run"] == chat_items - sum(flagged.values())
    # an unsteered run of other settings is not taken
    evaluate_capability(lm, tmp_path / "other", small_config(tasks=config.tasks, seed=1), records=RECORDS,
                        progress=False)
    assert evaluate_capability(lm, tmp_path / "reused2", config, spec, records=RECORDS, progress=False,
                               unsteered=tmp_path / "other")["items_from_unsteered_run"] == 0
