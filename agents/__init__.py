"""Agents: compositions of a model, an inner loop and an outer optimiser behind one protocol.

Installed as ``rl_maml.agents``. Variants are sibling classes with the same verbs
(``train_step``, ``trajectory``, ``evaluate``, ``state_dict``, ``load_state_dict``); the math they
use lives in :mod:`rl_maml`.
"""

from rl_maml.agents.alpha_maml import AlphaMAMLLearner
from rl_maml.agents.supervised import MAMLLearner, OracleLearner, PretrainedLearner, SupervisedLearner

__all__ = ["SupervisedLearner", "MAMLLearner", "AlphaMAMLLearner", "PretrainedLearner", "OracleLearner"]
