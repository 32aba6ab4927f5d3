"""What discovery shows a person: each candidate's top-activating responses, and the features page."""

from __future__ import annotations

from typing import Any

import torch

from saesteer import html as H
from saesteer.hooks import base_model, capture, run_until_stopped
from saesteer.models import ChatModel


def top_contexts(lm: ChatModel, sae: Any, layer: int, features: list[int], conversations: list,
                  r_max: torch.Tensor, kept: list[tuple[list[int], torch.Tensor]], n: int,
                  batch_size: int) -> dict[int, list[dict]]:
    """For each latent, the responses where it peaks, with per-token activations to highlight."""
    out: dict[int, list[dict]] = {}
    idx = torch.tensor(features)
    model = base_model(lm.model)
    for f in features:
        best = r_max[:, f].argsort(descending=True)[:n].tolist()
        out[f] = []
        for i in best:
            if r_max[i, f] <= 0:
                continue
            tokens, mask = kept[i]
            ids = torch.tensor([tokens], device=lm.device)
            with torch.inference_mode(), capture(model, [layer]) as acts:
                run_until_stopped(lambda: model(input_ids=ids, use_cache=False))
            z = sae.feature_acts(acts[layer][0].to(sae.W_dec.dtype), idx.to(lm.device))
            col = features.index(f)
            start = max(0, int(mask.nonzero()[0]) - 12) if mask.any() else 0
            toks = [lm.tokenizer.decode([t]) for t in tokens[start:]]
            out[f].append({"tokens": toks, "acts": [round(float(v), 3) for v in z[start:, col]],
                           "max": float(r_max[i, f])})
    return out


def render_features_page(result: dict[str, Any]) -> str:
    feats = result["features"]
    rows = [[f["rank"], H.Raw(f"<a href='#f{f['feature']}'>{f['feature']}</a>"), f.get("picked_by", ""),
             f["causal_score"], f["best_value"], f["best_harmful_gain"], f["refusal_auroc"], f["refusal_mean_diff"],
             f.get("attribution", ""), f.get("caa_cos", ""), f["prompt_auroc"]] for f in feats]
    fs = result.get("feature_set")
    set_note = (f"<p>Greedy multi-feature set (<code>multi.yaml</code>): latents {H.esc(fs['features'])}, "
                f"causal score {fs['score']:.3g}, harmful coherent refusal {fs['harmful_refusal']:.0%}, harmless "
                f"refusal {fs['harmless_refusal']:.0%}.</p>") if fs else ""
    body = [f"<h1>Refusal features — {H.esc(result['model']['name'])}, {H.esc(result['sae']['hook'])}</h1>",
            f"<p class='muted'>SAE {H.esc(result['sae']['path'])} ({result['sae']['d_sae']} latents). "
            f"The model refused {result['responses']['natural_refusals']} of {result['responses']['harmful_prompts']} "
            f"harmful prompts on its own. Baseline refusal on held-out prompts: harmful "
            f"{result['baseline']['harmful_refusal']:.0%}, harmless {result['baseline']['harmless_refusal']:.0%}. "
            f"Took {result['seconds']:.0f} s.</p>",
            "<h2>Ranking (causal check)</h2>",
            H.table(["rank", "feature", "picked by", "causal score", "clamp", "harmful gain", "refusal AUROC",
                     "mean diff", "attribution", "CAA cosine", "prompt AUROC"], rows),
            "<p class='muted'>causal score = coherent refusal gained on harmful minus refusal gained on harmless "
            "held-out prompts, at the best clamp value tried.</p>", set_note,
            "<h2>Detector candidates (harmful vs harmless prompts)</h2>",
            H.table(["feature", "prompt AUROC", "mean diff"],
                    [[d["feature"], d["prompt_auroc"], d["prompt_mean_diff"]] for d in result["detectors"]])]
    for f in feats:
        causal = H.table(["clamp", "harmful refusal", "harmless refusal", "score"],
                         [[c["value"], c["harmful_refusal"], c["harmless_refusal"], c["score"]] for c in f["causal"]])
        ctx = "".join(f"<div class='ctx'>{H.highlight(c['tokens'], c['acts'])}</div>" for c in f["contexts"])
        examples = "".join(f"<div class='ctx'><b>{H.esc(e['prompt'])}</b>\n{H.esc(e['response'])}</div>"
                           for e in max(f["causal"], key=lambda c: c["score"])["examples"])
        body.append(f"<div class='card' id='f{f['feature']}'><h3>Feature {f['feature']}</h3>"
                    f"<p>promotes: <code>{H.esc(' | '.join(f['promoted_tokens']))}</code><br>"
                    f"suppresses: <code>{H.esc(' | '.join(f['suppressed_tokens']))}</code></p>"
                    f"{causal}<h4>Top activating responses</h4>{ctx}"
                    f"<h4>Steered examples (best clamp)</h4>{examples}</div>")
    return H.page("saesteer: refusal features", "".join(body))
