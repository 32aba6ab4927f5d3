"""Steering: SAE feature edits and dense directions at hook points, optionally conditional."""

from saesteer.steer.engine import RowSteering, Steering, steer
from saesteer.steer.interventions import FeatureEdit
from saesteer.steer.spec import ConditionSpec, FileRef, InterventionSpec, SteeringSpec, sae_clamp_spec

__all__ = ["ConditionSpec", "FeatureEdit", "FileRef", "InterventionSpec", "RowSteering", "Steering", "SteeringSpec",
           "sae_clamp_spec", "steer"]
