"""Does the unsteered model's loss on an answer tell broken answers from coherent ones?

    SAESTEER_DATA=/path/to/shared/data python benchmarks/coherence_nll.py

For every hand-labelled smollm2 answer (benchmarks/labels/smollm2_answers.jsonl), the mean
per-token negative log-likelihood of the answer given its chat prompt under the unsteered model,
and its deciles for answers labelled coherent and broken. If they separate, the coherence check
should use it; measured 2026-12-01 they do not (docs/RESULTS.md), so it does not.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from saesteer.generate import encode_prompt  # noqa: E402
from saesteer.models import ChatModel, PromptLike  # noqa: E402

LABELS = Path(__file__).with_name("labels") / "smollm2_answers.jsonl"
PROMPT_SETS = "harmbench,advbench,strongreject,jailbreakbench,xstest,alpaca"


@torch.inference_mode()
def answer_nll(lm: ChatModel, prompts: Sequence[PromptLike], answers: Sequence[str], *,
               system: str | None = None, batch_size: int = 8, max_answer_tokens: int = 256) -> list[float | None]:
    """Mean negative log-likelihood (nats/token) of each answer given its chat prompt, under the
    model as loaded. None for an empty answer."""
    out: list[float | None] = []
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    for start in range(0, len(answers), batch_size):
        items = []
        for prompt, answer in zip(prompts[start:start + batch_size], answers[start:start + batch_size]):
            p = encode_prompt(lm, prompt, system=system)
            a = lm.tokenizer(answer, add_special_tokens=False)["input_ids"][:max_answer_tokens]
            items.append((p, a))
        width = max(len(p) + len(a) for p, a in items)
        ids = torch.full((len(items), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, (p, a) in enumerate(items):
            seq = p + a
            ids[i, width - len(seq):] = torch.tensor(seq)     # left padding, as generation does
            mask[i, width - len(seq):] = 1
        logits = lm.model(input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device)).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        targets = ids[:, 1:].to(lm.device)
        token_nll = -logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        for i, (_, a) in enumerate(items):
            if not a:
                out.append(None)
                continue
            out.append(float(token_nll[i, width - 1 - len(a):].mean()))
    return out


def main() -> None:
    from saesteer.data import load_records
    from saesteer.models import load_model

    rows = [json.loads(line) for line in LABELS.read_text(encoding="utf-8").splitlines()]
    prompts = {(r.source, r.id): r.prompt for r in load_records(PROMPT_SETS)}
    lm = load_model("smollm2")
    nll = answer_nll(lm, [prompts[(r["dataset"], r["id"])] for r in rows], [r["response"] for r in rows])
    for coherent in (True, False):
        values = [n for n, r in zip(nll, rows) if r["coherent"] == coherent and n is not None]
        deciles = ", ".join(f"{v:.2f}" for v in statistics.quantiles(values, n=10))
        print(f"{'coherent' if coherent else 'broken'} by hand ({len(values)}): NLL deciles {deciles}")


if __name__ == "__main__":
    main()
