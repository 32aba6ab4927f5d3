"""Find an SAE's refusal features and check them causally (`run`); rank latents by their effect
on the refusal reply as well as by activation (`attribution`); the features page (`page`)."""

from saesteer.discover.run import DiscoverConfig, auroc, discover, pooled_codes, prompt_hash

__all__ = ["DiscoverConfig", "auroc", "discover", "pooled_codes", "prompt_hash"]
