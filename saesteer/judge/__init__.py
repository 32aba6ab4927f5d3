"""The refusal judge, in tiers (phrase, classifier, LLM) behind one protocol; a leaf stage that
discovery, evaluation and serving all read."""

from saesteer.judge.base import Judge, Judgement, judge_stopper
from saesteer.judge.io import iter_labelled, judge_file, read_pairs
from saesteer.judge.tiers import DEFAULT_JUDGE, describe_judges, get_judge, judge_names

__all__ = ["DEFAULT_JUDGE", "Judge", "Judgement", "describe_judges", "get_judge", "iter_labelled",
           "judge_file", "judge_names", "judge_stopper", "read_pairs"]
