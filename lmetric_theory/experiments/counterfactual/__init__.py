"""Counterfactual study of the detector: does a flag predict harm, does a mitigation help?

:func:`counterfactual_study` forks the simulator at sampled decisions, replays every
instance choice and reports harm rates, AUROC, precision/recall and mitigation gains with
bootstrap intervals. Modules: :mod:`.forks` (branches and the cost rule), :mod:`.sampling`
(flag definitions, load-matched controls), :mod:`.study` (estimators, JSON).
"""

from lmetric_theory.experiments.counterfactual.forks import (
    DecisionForks,
    ForkTask,
    fork_decision,
    reseed_policy,
    run_fork_task,
)
from lmetric_theory.experiments.counterfactual.precedence import LossOnset, loss_onset, precedence
from lmetric_theory.experiments.counterfactual.sampling import (
    FLAG_DEFINITIONS,
    FLAG_TEXT,
    ROUTER_STATE_FLAGS,
    Sample,
    decision_load,
    flag_mask,
    hotspot_phase,
    load_deciles,
    matched_sample,
)
from lmetric_theory.experiments.counterfactual.study import (
    DEFAULTS,
    HARM_RULE,
    SIGNALS,
    CounterfactualStudy,
    counterfactual_study,
    policy_score,
)

__all__ = [
    "DEFAULTS",
    "FLAG_DEFINITIONS",
    "FLAG_TEXT",
    "HARM_RULE",
    "ROUTER_STATE_FLAGS",
    "SIGNALS",
    "CounterfactualStudy",
    "DecisionForks",
    "ForkTask",
    "LossOnset",
    "Sample",
    "counterfactual_study",
    "decision_load",
    "flag_mask",
    "fork_decision",
    "hotspot_phase",
    "load_deciles",
    "loss_onset",
    "matched_sample",
    "policy_score",
    "precedence",
    "reseed_policy",
    "run_fork_task",
]
