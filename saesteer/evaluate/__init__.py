"""Evaluation of a (steered) model: refusal and over-refusal, capability, steering sweeps.

Attacks (replayed conversations, Crescendo) live in `saesteer.attacks`; the judge in `saesteer.judge`."""
