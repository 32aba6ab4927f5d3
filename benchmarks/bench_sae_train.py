"""Top-k SAE training: saesteer vs sae-lens vs eai-sparsify, side by side in one run.

Same activations (a harvest folder, or synthetic ones), same width, k and batch, same Adam
learning-rate schedule, AuxK off (the paper's setting and sparsify's default). The trainers
take turns step by step on the very same batches, so load on a shared machine hits them alike.
Prints median training tokens/s (forward + backward + optimiser step), their ratios, and the
held-out FVU each reaches after the same token budget.

    .venv/bin/python benchmarks/bench_sae_train.py --acts /work/runs/acts_smollm2 --layer 6

Each peer uses its own library's training step as its trainer runs it (sparsify: unit-norm
decoder, parallel-gradient removal, FVU loss, b_dec = batch mean; sae-lens: TopKTrainingSAE,
MSE loss, fired-latent bookkeeping, grad-norm clipping, its default zero b_dec); saesteer
uses `saesteer.sae.train` (input scaling, b_dec = geometric median, encoder = decoder transpose
scaled to the least-squares fit of the first batch, sparse backward).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")

from benchmarks.common import header, median  # noqa: E402
from saesteer.sae.config import TrainConfig, lr_factor  # noqa: E402
from saesteer.sae.train import TrainStep, fold_scale, init_sae, make_optimizer, optimizer_step  # noqa: E402


class Ours:
    """saesteer's trainer; `options` switch one design choice off for an ablation."""

    name = "saesteer"

    def __init__(self, first: torch.Tensor, d_sae: int, k: int, lr: float, **options: str):
        self.config = TrainConfig(k=k, d_sae=d_sae, auxk_coef=0.0, lr=lr,
                                  normalize=options.get("normalize", "1") != "0",
                                  adam_eps=float(options.get("adam_eps", TrainConfig.adam_eps)))
        self.sae, self.scale = init_sae(first, d_sae, self.config)
        with torch.no_grad():
            if options.get("b_dec") == "mean":
                self.sae.b_dec.copy_((first * self.scale).mean(0))
            if "enc_scale" in options:  # replaces the fitted scale; 1 = Gao et al.'s tied init
                self.sae.W_enc.copy_(self.sae.W_dec.t() * float(options["enc_scale"]))
        self.step_module = TrainStep(self.sae, self.config)
        self.opt = make_optimizer(list(self.sae.parameters()), self.config, lr)

    def step(self, x: torch.Tensor, lr: float) -> None:
        optimizer_step(self.step_module, self.sae, self.opt, x * self.scale, None, lr)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return fold_scale(self.sae, self.scale)(x)


class Sparsify:
    name = "eai-sparsify"

    def __init__(self, first: torch.Tensor, d_sae: int, k: int, lr: float):
        from sparsify import SparseCoder, SparseCoderConfig

        torch.manual_seed(0)
        self.sae = SparseCoder(first.shape[1], SparseCoderConfig(k=k, num_latents=d_sae))
        with torch.no_grad():
            self.sae.b_dec.copy_(first.mean(0))  # as sparsify's Trainer does on its first batch
        self.opt = torch.optim.Adam(self.sae.parameters(), lr=lr)

    def step(self, x: torch.Tensor, lr: float) -> None:
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.sae.set_decoder_norm_to_unit_norm()
        out = self.sae(x)
        out.fvu.backward()
        self.sae.remove_gradient_parallel_to_decoder_directions()
        self.opt.step()
        self.opt.zero_grad()

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.sae(x).sae_out


class SAELens:
    name = "sae-lens"

    def __init__(self, first: torch.Tensor, d_sae: int, k: int, lr: float):
        from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

        torch.manual_seed(0)
        self.sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=first.shape[1], d_sae=d_sae, k=k))
        self.opt = torch.optim.Adam(self.sae.parameters(), lr=lr)
        self.since_fired = torch.zeros(d_sae)
        self.n = 0

    def step(self, x: torch.Tensor, lr: float) -> None:
        from sae_lens.saes.sae import TrainStepInput

        for group in self.opt.param_groups:
            group["lr"] = lr
        out = self.sae.training_forward_pass(TrainStepInput(sae_in=x, coefficients={}, dead_neuron_mask=None,
                                                            n_training_steps=self.n, is_logging_step=False))
        with torch.no_grad():  # what SAETrainer._train_step does besides the loss
            fired = out.feature_acts.bool().float().sum(-2).bool()
            self.since_fired += 1
            self.since_fired[fired] = 0
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(self.sae.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad()
        self.n += 1

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.sae.decode(self.sae.encode(x))


PEERS: dict[str, Callable[..., object]] = {"saesteer": Ours, "sparsify": Sparsify, "sae-lens": SAELens}


def make_trainer(spec: str, first: torch.Tensor, d_sae: int, k: int, lr: float) -> object:
    """`saesteer`, `sparsify`, `sae-lens`, or an ablation like `saesteer:enc_scale=1,b_dec=mean`."""
    name, _, opts = spec.partition(":")
    if not opts:
        return PEERS[name](first, d_sae, k, lr)
    trainer = Ours(first, d_sae, k, lr, **dict(o.split("=", 1) for o in opts.split(",")))
    trainer.name = spec
    return trainer


def data(args: argparse.Namespace) -> tuple[Iterator[torch.Tensor], torch.Tensor, str]:
    if args.acts:
        from saesteer.sae.data import ShardSource

        source = ShardSource(Path(args.acts), args.layer, holdout_tokens=args.eval_tokens)
        held = torch.cat(list(source.holdout(args.eval_tokens)))
        what = f"{args.acts} layer {source.store.layer} ({source.train_tokens:,} training tokens)"
        return source.batches(args.batch_tokens, seed=0), held, what
    from saesteer.sae.synthetic import synthetic_activations

    def gen() -> Iterator[torch.Tensor]:
        for i in range(10**9):
            yield synthetic_activations(args.batch_tokens, args.d_in, n_features=4 * args.d_in, active=16, seed=i + 1)

    return gen(), synthetic_activations(args.eval_tokens, args.d_in, n_features=4 * args.d_in, active=16,
                                        seed=0), "synthetic sparse activations"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--acts", help="harvest folder (default: synthetic activations)")
    p.add_argument("--layer", default=None)
    p.add_argument("--d-in", type=int, default=576, help="width of the synthetic activations")
    p.add_argument("--expansion", type=int, default=8)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch-tokens", type=int, default=4096)
    p.add_argument("--steps", type=int, default=60, help="token budget = steps x batch tokens")
    p.add_argument("--skip", type=int, default=3, help="first steps left out of the timing")
    p.add_argument("--lr", type=float, default=None, help="default: saesteer's rule for this width")
    p.add_argument("--warmup-steps", type=int, default=10)
    p.add_argument("--eval-tokens", type=int, default=65_536)
    p.add_argument("--peers", default="saesteer,sparsify,sae-lens",
                   help="trainers, separated by ';' or ','; ablations of ours: 'saesteer:enc_scale=1' (tied "
                        "encoder), 'saesteer:normalize=0', 'saesteer:b_dec=mean', 'saesteer:adam_eps=1e-8'")
    args = p.parse_args()

    header("Top-k SAE training: tokens/s and FVU after the same budget")
    batches, held, what = data(args)
    first = next(batches)
    d_in = first.shape[1]
    d_sae = args.expansion * d_in
    lr = args.lr or TrainConfig(d_sae=d_sae).learning_rate(d_sae)
    print(f"# data: {what}; d_in {d_in} -> d_sae {d_sae}, k {args.k}, {args.batch_tokens} tokens/step, "
          f"{args.steps} steps, lr {lr:.2e}, AuxK off")
    specs = args.peers.split(";") if ";" in args.peers else args.peers.split(",")
    trainers = [make_trainer(spec, first, d_sae, args.k, lr) for spec in specs]
    times: dict[str, list[float]] = {t.name: [] for t in trainers}  # type: ignore[attr-defined]
    x = first
    for step in range(args.steps):
        step_lr = lr * lr_factor(step, args.steps, args.warmup_steps, 0.2)
        order = trainers if step % 2 == 0 else trainers[::-1]  # alternate who goes first
        for t in order:
            start = time.perf_counter()
            t.step(x, step_lr)  # type: ignore[attr-defined]
            if step >= args.skip:
                times[t.name].append(time.perf_counter() - start)  # type: ignore[attr-defined]
        x = next(batches)
        if (step + 1) % 10 == 0:
            rates = ", ".join(f"{n} {args.batch_tokens / median(v):,.0f}" for n, v in times.items() if v)
            print(f"  step {step + 1}/{args.steps}: tokens/s {rates}", flush=True)

    held_var = float((held - held.mean(0)).pow(2).sum())
    print(f"\n{'trainer':28s} {'tokens/s':>10s} {'FVU':>8s}")
    rate, fvu = {}, {}
    for t in trainers:
        name = t.name  # type: ignore[attr-defined]
        rate[name] = args.batch_tokens / median(times[name])
        err = sum(float((t.reconstruct(c) - c).pow(2).sum()) for c in held.split(4096))  # type: ignore[attr-defined]
        fvu[name] = err / held_var
        print(f"{name:28s} {rate[name]:10,.0f} {fvu[name]:8.4f}")
    peers = {n: r for n, r in rate.items() if not n.startswith("saesteer")}
    if "saesteer" in rate and len(rate) > 1:
        for n in [n for n in rate if n != "saesteer"]:
            print(f"ratio saesteer / {n}: {rate['saesteer'] / rate[n]:.2f}x tokens/s, "
                  f"FVU {fvu['saesteer']:.4f} vs {fvu[n]:.4f}")
    if "saesteer" in rate and peers:
        fastest = max(peers, key=peers.get)  # type: ignore[arg-type]
        ok = rate["saesteer"] >= 1.5 * rate[fastest] and fvu["saesteer"] <= fvu[fastest] + 1e-9
        print(f"goal (>= 1.5x the faster peer, {fastest}, with equal or lower FVU): {'met' if ok else 'NOT met'}")
    assert all(math.isfinite(v) for v in fvu.values())


if __name__ == "__main__":
    main()
