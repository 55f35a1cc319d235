"""Naive blocking versus landscape reshaping: does gradient descent route around a blocked direction?

For each task, a shortcut predicts the label in training and not at test. Each arm trains
``num_seeds`` seeds times its grid of one hyper-parameter in one compiled program:

* baselines: ``plain`` training, and the ``oracle`` trained on data whose shortcut carries no
  label information;
* blocking: ``grad_mask`` (the input weights that read the shortcut never move),
  ``ablate_fixed`` / ``ablate_refit`` (the probe subspace of the shortcut concept is projected out
  of a hidden site's activations in training and at test, found once at initialisation or refitted
  every ``refit_every`` steps), ``project_fixed`` / ``project_refit`` (the same subspace projected
  out of every update to the parameters that write into or read from that site);
* reshaping: ``explanation`` (Ross et al.'s penalty on the input gradient over the shortcut's
  inputs), ``adversary`` (a probe for the concept at the site, trained through gradient reversal),
  ``steering`` (preventative steering: each example's concept offset added at the site in training,
  off at test), ``concept_penalty`` (L2 of the site's coordinates along the refitted concept basis).

Each arm is one value in ``ARM_REGISTRY`` (its name, family, how it builds its objective and
optimizer, and its grid); each task one in ``TASK_REGISTRY``.

Each arm's grid point is chosen on a validation split drawn like the test shift and disjoint from
the test split (``val_ood``); the report compares arms on the test splits with 95% intervals over
seeds and judges the pre-registered criteria (``PREREGISTERED``, data judged by ``evaluate``) from
the run's own numbers.
"""

from landscape.block_vs_reshape._arms import ARM_REGISTRY
from landscape.block_vs_reshape._arms import ARMS
from landscape.block_vs_reshape._arms import Arm
from landscape.block_vs_reshape._arms import FAMILIES
from landscape.block_vs_reshape._arms import plan_arm
from landscape.block_vs_reshape._criteria import CRITERIA
from landscape.block_vs_reshape._criteria import OVER_ORACLE
from landscape.block_vs_reshape._criteria import PREREGISTERED
from landscape.block_vs_reshape._criteria import Criterion
from landscape.block_vs_reshape._criteria import Verdict
from landscape.block_vs_reshape._criteria import evaluate
from landscape.block_vs_reshape._run import run
from landscape.block_vs_reshape._tasks import TASK_REGISTRY
from landscape.block_vs_reshape._tasks import TASKS
from landscape.block_vs_reshape._tasks import Task
