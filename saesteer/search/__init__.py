"""Automatic steering search: candidate interventions x gates x thresholds, chosen by successive
halving against an objective on train prompts (`saesteer search`)."""

from saesteer.search.candidates import METHODS, CandidateGrid
from saesteer.search.objective import Objective
from saesteer.search.run import SearchConfig, run_search

__all__ = ["METHODS", "CandidateGrid", "Objective", "SearchConfig", "run_search"]
