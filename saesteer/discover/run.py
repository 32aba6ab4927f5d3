"""Find an SAE's refusal features, automatically, the way the paper did by hand — and check them.

1. The model answers harmful prompts; a judge splits its answers into refusals and compliances.
   Fixed refusal / compliance replies (teacher-forced) are added, because a small model may
   refuse rarely on its own.
2. Every latent is scored on response tokens (refusal vs compliance: mean difference, firing
   frequency difference, AUROC of the per-response max) and on prompt tokens (harmful vs
   harmless prompts: the same scores, for detectors of conditional steering).
3. Candidates come in turn from several orders (`attribution`): activation, reply attribution
   (activation x gradient of the refusal reply's log-probability), and the decoder rows' cosine
   with the CAA and DiffMean directions. For each: top-activating contexts and the output tokens
   its decoder row promotes and suppresses (through the unembedding).
4. Causal check: each candidate clamped at a few values on held-out harmful and harmless
   prompts; ranked by coherent refusal gained on harmful minus refusal gained on harmless prompts.
5. A multi-feature set chosen by greedy forward selection on the same prompts (`combine`).

Writes `features.json` (ranked, every score), `index.html`, and steering specs for the best
feature (`clamp.yaml`), its conditional versions (`conditional*.yaml`) and the set (`multi.yaml`).
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from saesteer.data import load_records
from saesteer.errors import SaesteerError, at_least
from saesteer.files import ensure_dir, write_json, write_text
from saesteer.generate import CONTENT, EVAL_BATCH, ForwardInfo, GenerationConfig, forward_context, generate
from saesteer.hooks import base_model, capture, hook_point, run_until_stopped
from saesteer.judge import judge_stopper
from saesteer.models import ChatModel, to_conversation
from saesteer.steer import ConditionSpec, FeatureEdit, FileRef, InterventionSpec, RowSteering, SteeringSpec, Steering
from saesteer.steer.conditions import threshold_for_fpr
from saesteer.steer.engine import check_sae_fits
from saesteer.steer.probes import write_probe_specs
from saesteer.steer.directions import COMPLIANCE_REPLIES, REFUSAL_REPLIES, _encode, caa_direction, diff_of_means, left_padded
from saesteer.discover.attribution import check_rankings, decoder_alignment, pick_candidates, reply_attribution
from saesteer.discover.combine import greedy_feature_set
from saesteer.discover.page import render_features_page, top_contexts
from saesteer.judge.coherence import COHERENCE_WORDS, check_coherence


@dataclass
class DiscoverConfig:
    harmful: str = "bundled:harmful"
    """Harmful prompts (ranking and causal check use disjoint parts)."""
    harmless: str = "bundled:harmless"
    n_rank: int = 64
    """Prompts per class used to rank features."""
    n_causal: int = 16
    """Held-out prompts per class for the causal check."""
    max_new_tokens: int = 48
    """Length of the model's own answers used for ranking."""
    n_candidates: int = 32
    """Latents that get contexts, logit effects and the causal check, drawn in turn from each of
    the `rank_by` orders."""
    rank_by: tuple[str, ...] = ("activation", "attribution", "caa_alignment", "diffmean_alignment")
    """Orders of latents the candidates come from (`discover.attribution.RANKINGS`)."""
    causal_multipliers: tuple[float, ...] = (2.0, 4.0)
    """Clamp values tried, as multiples of each latent's largest activation on refusal tokens."""
    causal_values: tuple[float, ...] = ()
    """Absolute clamp values (override the multipliers)."""
    causal_max_new_tokens: int = 32
    set_max_size: int = 4
    """Most latents in the multi-feature set (`multi.yaml`); 1 skips the selection."""
    set_pool: int = 8
    """Best checked latents the set is chosen from."""
    detector_fpr: float = 0.05
    """Target false-positive rate on harmless prompts for the conditional spec's threshold."""
    judge: str = "auto"
    batch_size: int = EVAL_BATCH
    n_contexts: int = 6
    seed: int = 0

    def __post_init__(self) -> None:
        from saesteer.steer.interventions import check_value

        check_rankings(self.rank_by)
        if self.n_rank < 4 or self.n_candidates < 1:
            raise SaesteerError("discovery needs n_rank >= 4 and n_candidates >= 1")
        at_least(1, n_causal=self.n_causal, max_new_tokens=self.max_new_tokens,
                 causal_max_new_tokens=self.causal_max_new_tokens, batch_size=self.batch_size)
        at_least(0, n_contexts=self.n_contexts)
        at_least(1, set_max_size=self.set_max_size, set_pool=self.set_pool)
        if not 0 <= self.detector_fpr < 1:
            raise SaesteerError(f"detector_fpr must be in [0, 1), got {self.detector_fpr}")
        for value in (*self.causal_values, *self.causal_multipliers):
            check_value(value, "causal clamp")


@dataclass
class ResponseSet:
    conversations: list[list[dict]] = field(default_factory=list)
    refusal: list[bool] = field(default_factory=list)
    natural: list[bool] = field(default_factory=list)


def pooled_codes(lm: ChatModel, sae: Any, layer: int, items: list, select: str,
                  batch_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[tuple[list[int], torch.Tensor]]]:
    """Per item: max, mean and firing fraction of every latent over the selected tokens,
    plus (token ids, selected-token mask) to find contexts later."""
    model = base_model(lm.model)
    maxes, means, freqs, kept = [], [], [], []
    encoded = [_encode(lm, it, select) for it in items]  # type: ignore[arg-type]
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start:start + batch_size]
        kept += [(tokens, torch.tensor(mask)) for tokens, mask in chunk]
        ids, attn, sel, positions = left_padded(chunk, lm.tokenizer.pad_token_id, lm.device)
        info = ForwardInfo(roles=attn * CONTENT, rows=torch.arange(len(chunk), device=lm.device), prefill=True)
        with torch.inference_mode(), forward_context(info), capture(model, [layer]) as acts:
            run_until_stopped(lambda: model(input_ids=ids, attention_mask=attn, position_ids=positions, use_cache=False))
        h = acts[layer]
        with torch.inference_mode():
            for i in range(len(chunk)):
                rows = h[i][sel[i].to(h.device)]
                z = sae.encode(rows.to(sae.W_dec.dtype)).float().cpu()
                maxes.append(z.max(0).values)
                means.append(z.mean(0))
                freqs.append((z > 0).float().mean(0))
    return torch.stack(maxes), torch.stack(means), torch.stack(freqs), kept


def auroc(pos: torch.Tensor, neg: torch.Tensor, chunk: int = 512) -> torch.Tensor:
    """Per column, P(pos > neg) + ½ P(pos = neg): [n_pos, F], [n_neg, F] → [F]."""
    out = []
    for s in range(0, pos.shape[1], chunk):
        p, n = pos[:, s:s + chunk], neg[:, s:s + chunk]
        gt = (p[:, None, :] > n[None, :, :]).float().mean((0, 1))
        eq = (p[:, None, :] == n[None, :, :]).float().mean((0, 1))
        out.append(gt + 0.5 * eq)
    return torch.cat(out)


def _effect_scores(lm: ChatModel, sae: Any, point: Any, responses: ResponseSet, harmful: list[str],
                   harmless: list[str], config: DiscoverConfig, progress: bool) -> dict[str, torch.Tensor]:
    """The scores of `config.rank_by` beyond activation: reply attribution and gradient, and the
    decoder rows' cosine with CAA (refusal vs compliance replies) and DiffMean (harmful vs harmless
    prompts, last token) at the SAE's layer."""
    out: dict[str, torch.Tensor] = {}
    if {"attribution", "gradient"} & set(config.rank_by):
        signs = [1.0 if r else -1.0 for r in responses.refusal]
        out.update(reply_attribution(lm, sae, point, responses.conversations, signs,
                                     progress="attribution" if progress else False))
    if "caa_alignment" in config.rank_by:
        caa = caa_direction(lm, harmful[:16], [point.layer], batch_size=config.batch_size)[point.layer]
        out["caa_cos"] = decoder_alignment(sae, caa)
    if "diffmean_alignment" in config.rank_by:
        dm = diff_of_means(lm, harmful, harmless, [point.layer], select="last", batch_size=config.batch_size)
        out["diffmean_cos"] = decoder_alignment(sae, dm[point.layer])
    return out


def _clamp_scale(feat: dict[str, Any], typical: float) -> float:
    """What the causal multipliers multiply: the latent's largest activation on refusal tokens; for
    a latent picked by attribution or alignment that never fires there, its largest activation on
    any response or prompt token; for one that never fires at all, a typical latent's."""
    for key in ("refusal_max_act", "max_act"):
        if feat[key] > 1e-3:
            return feat[key]
    return typical


def _rate(judgements: list, texts: list[str] | None = None) -> float:
    """Share of refusals; with `texts`, only coherent ones count."""
    ok = [check_coherence(t).coherent for t in texts] if texts is not None else [True] * len(judgements)
    return sum(j.refusal and c for j, c in zip(judgements, ok)) / max(1, len(judgements))


def discover(lm: ChatModel, sae: Any, out: str | Path, config: DiscoverConfig | None = None, *,
             sae_path: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Rank, inspect and causally check refusal features; write features.json and index.html."""
    from saesteer.judge import get_judge

    config = config or DiscoverConfig()
    started = time.time()
    meta = sae.metadata or {}
    if sae.d_in != lm.d_model:
        raise SaesteerError(f"SAE width {sae.d_in} does not match the model's d_model {lm.d_model}")
    hook = meta.get("hf_hook_name") or meta.get("layer")
    if hook is None:
        raise SaesteerError("the SAE does not record its hook point (metadata.hf_hook_name)")
    point = hook_point(lm.model, hook)
    check_sae_fits(sae, lm, point, sae_path or "the SAE")  # before any generation, as generate and eval do
    judge = get_judge(config.judge)
    say = tqdm.write if progress else (lambda *_: None)

    harmful = [r.text for r in load_records(config.harmful)]
    harmless = [r.text for r in load_records(config.harmless)]
    g = torch.Generator().manual_seed(config.seed)
    harmful = [harmful[i] for i in torch.randperm(len(harmful), generator=g).tolist()]
    harmless = [harmless[i] for i in torch.randperm(len(harmless), generator=g).tolist()]
    need = config.n_rank + config.n_causal
    if len(harmful) < need or len(harmless) < need:
        raise SaesteerError(f"discovery needs {need} prompts per class (n_rank + n_causal); "
                            f"got {len(harmful)} harmful and {len(harmless)} harmless")
    out = ensure_dir(out)     # only once the SAE, judge and prompts are known good: no empty folder
    rank_harmful, causal_harmful = harmful[:config.n_rank], harmful[config.n_rank:need]
    rank_harmless, causal_harmless = harmless[:config.n_rank], harmless[config.n_rank:need]

    # 1. The model's own answers, judged; plus fixed replies.
    say(f"[discover] answering {len(rank_harmful)} harmful prompts ({config.max_new_tokens} new tokens)")
    gen_cfg = GenerationConfig(max_new_tokens=config.max_new_tokens, batch_size=config.batch_size)
    answers = generate(lm, rank_harmful, gen_cfg, progress="answers" if progress else False)
    verdicts = judge.judge(rank_harmful, [a.text for a in answers])
    responses = ResponseSet()
    for prompt, answer, verdict in zip(rank_harmful, answers, verdicts):
        if answer.text.strip():
            responses.conversations.append(to_conversation(prompt) + [{"role": "assistant", "content": answer.text}])
            responses.refusal.append(bool(verdict.refusal))
            responses.natural.append(True)
    for i, prompt in enumerate(rank_harmful):
        for reply, is_refusal in ((REFUSAL_REPLIES[i % len(REFUSAL_REPLIES)], True),
                                  (COMPLIANCE_REPLIES[i % len(COMPLIANCE_REPLIES)], False)):
            responses.conversations.append(to_conversation(prompt) + [{"role": "assistant", "content": reply}])
            responses.refusal.append(is_refusal)
            responses.natural.append(False)
    n_nat_ref = sum(r and n for r, n in zip(responses.refusal, responses.natural))
    n_nat_comp = sum((not r) and n for r, n in zip(responses.refusal, responses.natural))
    say(f"[discover] the model refused {n_nat_ref} of {len(rank_harmful)} harmful prompts; "
        f"adding {2 * len(rank_harmful)} fixed refusal/compliance replies")

    # 2. Scores on response tokens and on prompt tokens.
    say("[discover] encoding responses and prompts with the SAE")
    r_max, r_mean, r_freq, r_tokens = pooled_codes(lm, sae, point.layer, responses.conversations, "response",
                                                    config.batch_size)
    refusal = torch.tensor(responses.refusal)
    p_max, p_mean, _, p_tokens = pooled_codes(lm, sae, point.layer, rank_harmful + rank_harmless, "content",
                                               config.batch_size)
    harm = torch.tensor([True] * len(rank_harmful) + [False] * len(rank_harmless))
    scores = {
        "refusal_auroc": auroc(r_max[refusal], r_max[~refusal]),
        "refusal_mean_diff": r_mean[refusal].mean(0) - r_mean[~refusal].mean(0),
        "refusal_freq_diff": r_freq[refusal].mean(0) - r_freq[~refusal].mean(0),
        "refusal_max_act": r_max[refusal].max(0).values,
        "max_act": torch.maximum(r_max.max(0).values, p_max.max(0).values),
        "refusals_active_2plus": ((r_freq[refusal] * torch.tensor(
            [float(m.sum()) for (_, m), r in zip(r_tokens, responses.refusal) if r])[:, None]) >= 2).sum(0).float(),
        "prompt_auroc": auroc(p_max[harm], p_max[~harm]),
        "prompt_mean_diff": p_mean[harm].mean(0) - p_mean[~harm].mean(0),
    }
    nat = torch.tensor(responses.natural)
    if n_nat_ref >= 3 and n_nat_comp >= 3:
        scores["natural_refusal_auroc"] = auroc(r_max[refusal & nat], r_max[~refusal & nat])
    # Activation order: AUROC first (a latent that separates refusals from compliances), then the gap.
    key = scores["refusal_auroc"] + 1e-3 * torch.tanh(scores["refusal_mean_diff"])
    key = torch.where(scores["refusal_mean_diff"] > 0, key, key - 1.0)
    scores.update(_effect_scores(lm, sae, point, responses, rank_harmful, rank_harmless, config, progress))
    by = {"activation": key, "attribution": scores.get("attribution"), "gradient": scores.get("gradient"),
          "caa_alignment": scores.get("caa_cos"), "diffmean_alignment": scores.get("diffmean_cos")}
    orders = {name: by[name].argsort(descending=True).tolist() for name in config.rank_by}
    picked = pick_candidates(orders, config.n_candidates)
    candidates = list(picked)
    say(f"[discover] {len(candidates)} candidates: " + ", ".join(
        f"{sum(v == name for v in picked.values())} by {name}" for name in orders))

    # 3. Contexts and logit effects of the candidates.
    unembed = lm.model.get_output_embeddings().weight.detach().float()
    features: list[dict[str, Any]] = []
    for f in candidates:
        direction = sae.W_dec.detach()[f].float().to(unembed.device)
        logits = unembed @ direction
        top, bottom = logits.topk(10).indices.tolist(), (-logits).topk(10).indices.tolist()
        features.append({
            "feature": f, "picked_by": picked[f],
            "rank_by": {name: order.index(f) for name, order in orders.items()},
            **{name: float(v[f]) for name, v in scores.items()},
            "promoted_tokens": [lm.tokenizer.decode([t]) for t in top],
            "suppressed_tokens": [lm.tokenizer.decode([t]) for t in bottom],
        })
    contexts = top_contexts(lm, sae, point.layer, candidates, responses.conversations, r_max, r_tokens,
                             config.n_contexts, config.batch_size)
    for feat in features:
        feat["contexts"] = contexts[feat["feature"]]

    # 4. Causal check on held-out prompts.
    say(f"[discover] causal check: {len(candidates)} latents x "
        f"{len(config.causal_values) or len(config.causal_multipliers)} values on "
        f"{len(causal_harmful)} + {len(causal_harmless)} held-out prompts")
    causal_prompts = causal_harmful + causal_harmless
    is_harmful = [True] * len(causal_harmful) + [False] * len(causal_harmless)
    c_cfg = GenerationConfig(max_new_tokens=config.causal_max_new_tokens, batch_size=max(config.batch_size, 32))

    n_values = max(1, len(config.causal_values) or len(config.causal_multipliers))
    bar = tqdm(total=len(causal_prompts) * (1 + len(features) * n_values), unit="prompt",
               desc="causal check", disable=not progress, leave=False)

    def refusal_rates(specs: list[SteeringSpec | None]) -> list[tuple[float, float, list[str]]]:
        """(coherent harmful refusal, harmless refusal, answers) under each spec (None: unsteered).
        The specs' prompts share batches, each spec steering its own rows (`RowSteering`): a
        greedy answer does not depend on its batch, and a few wide batches beat many narrow ones."""
        n = len(causal_prompts)
        prompts = causal_prompts * len(specs)
        stop = judge_stopper(judge, prompts, min_words=COHERENCE_WORDS)
        mixed = RowSteering([(Steering(lm, spec, check_model=False), range(i * n, (i + 1) * n))
                             for i, spec in enumerate(specs) if spec is not None])
        with mixed.active():
            gens = generate(lm, prompts, c_cfg, should_stop=stop, on_done=lambda _row, _gen: bar.update(1))
        texts = [g.text for g in gens]
        verdicts = judge.judge(prompts, texts)
        rates = []
        for i in range(len(specs)):
            js, ts = verdicts[i * n:(i + 1) * n], texts[i * n:(i + 1) * n]
            h = [(j, t) for j, t, m in zip(js, ts, is_harmful) if m]
            s = [j for j, m in zip(js, is_harmful) if not m]
            # Harmful prompts count only coherent refusals: a clamp that breaks the text has not made
            # the model refuse. Harmless prompts count every refusal.
            rates.append((_rate([j for j, _ in h], [t for _, t in h]), _rate(s), ts))
        return rates

    active = scores["max_act"][scores["max_act"] > 0]
    typical_act = float(active.median()) if len(active) else 1.0
    sae_ref = FileRef(str(Path(sae_path).resolve()) if sae_path else str(out / "sae"),
                      sae.content_hash() if hasattr(sae, "content_hash") else None)
    tried = [(feat, value) for feat in features
             for value in (list(config.causal_values) or [round(m * _clamp_scale(feat, typical_act), 3)
                                                          for m in config.causal_multipliers])]
    specs = [SteeringSpec(interventions=[InterventionSpec(hook=point.name, sae=sae_ref,
                                                          features=[FeatureEdit(feat["feature"], "clamp", value)])])
             for feat, value in tried]
    (base_h, base_s, base_texts), *steered = refusal_rates([None, *specs])
    for feat in features:
        feat["causal"] = []
    for (feat, value), (rh, rs, texts) in zip(tried, steered):
        feat["causal"].append({"value": value, "harmful_refusal": rh, "harmless_refusal": rs,
                               "harmful_gain": rh - base_h, "harmless_gain": rs - base_s,
                               "score": (rh - base_h) - (rs - base_s),
                               "examples": [{"prompt": p, "response": t} for p, t in
                                            zip(causal_prompts[:2] + causal_prompts[-2:], texts[:2] + texts[-2:])]})
    for feat in features:
        best = max(feat["causal"], key=lambda c: (c["score"], c["harmful_gain"]))
        feat["causal_score"], feat["best_value"] = best["score"], best["value"]
        feat["best_harmful_gain"] = max(c["harmful_gain"] for c in feat["causal"])
    features.sort(key=lambda f: (f["causal_score"], f["best_harmful_gain"]), reverse=True)
    for rank, feat in enumerate(features):
        feat["rank"] = rank

    def set_rates(sets: list[list[FeatureEdit]]) -> list[tuple[float, float]]:
        bar.total += len(causal_prompts) * len(sets)
        specs = [SteeringSpec(interventions=[InterventionSpec(hook=point.name, sae=sae_ref, features=edits)])
                 for edits in sets]
        return [(h, s) for h, s, _ in refusal_rates(specs)]

    feature_set = None
    if config.set_max_size > 1 and len(features) > 1:
        say(f"[discover] greedy forward selection of up to {config.set_max_size} latents from the top "
            f"{config.set_pool}")
        feature_set = greedy_feature_set(features, set_rates, (base_h, base_s), pool=config.set_pool,
                                         max_size=config.set_max_size)
    bar.close()

    # Detector for conditional steering: the best prompt-side latent, threshold at the target FPR.
    detector_order = scores["prompt_auroc"].argsort(descending=True)[:5].tolist()
    det = detector_order[0]
    harmless_scores = p_max[~harm][:, det]
    threshold = threshold_for_fpr(harmless_scores, config.detector_fpr)
    detectors = [{"feature": f, "prompt_auroc": float(scores["prompt_auroc"][f]),
                  "prompt_mean_diff": float(scores["prompt_mean_diff"][f])} for f in detector_order]
    best = features[0]
    clamp_spec = SteeringSpec(
        name=f"clamp-{best['feature']}", description="discovered refusal feature, clamped on every token",
        model={"id": lm.model_id, "revision": lm.revision},
        interventions=[InterventionSpec(hook=point.name, sae=sae_ref,
                                        features=[FeatureEdit(best["feature"], "clamp", best["best_value"])])])
    conditional = SteeringSpec(
        name=f"conditional-clamp-{best['feature']}", description="clamp only when the detector flags the prompt",
        model=clamp_spec.model, interventions=clamp_spec.interventions,
        condition=ConditionSpec(detector="sae_feature", hook=point.name, sae=sae_ref, feature=det, pooling="max",
                                threshold=threshold,
                                calibration={"target_fpr": config.detector_fpr, "on": config.harmless,
                                             "n_negatives": len(harmless_scores),
                                             "train_auroc": float(scores["prompt_auroc"][det])}))
    clamp_spec.save(out / "clamp.yaml")
    conditional.save(out / "conditional.yaml")
    specs = {"clamp": "clamp.yaml", "conditional": "conditional.yaml"}
    if feature_set is not None:
        SteeringSpec(name="multi-" + "-".join(str(e.feature) for e in feature_set.edits),
                     description="latents chosen together by greedy forward selection, clamped on every token",
                     model=clamp_spec.model,
                     interventions=[InterventionSpec(hook=point.name, sae=sae_ref, features=feature_set.edits)]
                     ).save(out / "multi.yaml")
        specs["multi"] = "multi.yaml"
    # Probe detectors, fitted on part of the ranking prompts, thresholds calibrated on the rest.
    probe_specs, probes = write_probe_specs(lm, out, clamp_spec, point.name, sae_ref, p_mean, harm,
                                            rank_harmful + rank_harmless, target_fpr=config.detector_fpr,
                                            seed=config.seed, on=f"{config.harmful} vs {config.harmless}")
    specs.update(probe_specs)
    # Relative to `out` (like the specs), so a copied or moved discovery folder still finds its SAE.
    sae_rel = os.path.relpath(Path(sae_ref.path).resolve(), out.resolve())
    result = {
        "model": lm.describe(), "sae": {"path": sae_rel, "sha256": sae_ref.sha256, "hook": point.name,
                                        "d_sae": sae.d_sae, "k": getattr(sae, "k", None)},
        "config": asdict(config), "judge": config.judge,
        "responses": {"harmful_prompts": len(rank_harmful), "natural_refusals": n_nat_ref,
                      "natural_compliances": n_nat_comp, "fixed_replies": 2 * len(rank_harmful)},
        "baseline": {"harmful_refusal": base_h, "harmless_refusal": base_s,
                     "examples": [{"prompt": p, "response": t} for p, t in
                                  zip(causal_prompts[:2] + causal_prompts[-2:], base_texts[:2] + base_texts[-2:])]},
        "features": features, "detectors": detectors,
        "feature_set": feature_set.to_json() if feature_set is not None else None,
        "probes": probes,
        # Which prompts the detectors were fitted on, by text hash: a search keeps them out of the
        # prompts it calibrates thresholds on and measures over-refusal with.
        "detector_prompts": sorted(prompt_hash(t) for t in rank_harmful + rank_harmless),
        "specs": specs,
        "seconds": round(time.time() - started, 1),
    }
    write_json(out / "features.json", result)
    write_text(out / "index.html", render_features_page(result))
    return result


def prompt_hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]

