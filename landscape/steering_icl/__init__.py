"""Steering and in-context learning: the exchange rate between a steering magnitude and shots.

Library: `fit_belief_dynamics` fits Bigelow et al.'s log-odds(c) = a*m + b + gamma*N^(1-alpha)
(arXiv 2511.00617) to a grid of measured log-odds, with intervals from `bootstrap_replicates`
(seeds and prompt groups resampled as crossed factors); `fit_shot_curve` fits the evidence term of
one curve alone. `shots_for_magnitude`, `magnitude_for_shots` and `flip_boundary` convert between
steering and shots inside the measured range and raise `OutOfFitRangeError` outside it;
`shot_vector` builds a steering vector from in-context examples (the difference of means is
`landscape.directions.diff_of_means`); `train_site_saes` and `choose_feature` give the SAE feature
that best separates two concepts (by `auroc`, judged against `SEPARATION_THRESHOLD`).

Experiment (`run`): a small GPT trained on a GINC mixture of HMMs (`landscape.data.ginc_mixture`,
exact posterior by the forward algorithm) is steered at every layer's residual stream over a grid of
magnitudes and shot counts; the report judges the pre-registered criteria (`PREREGISTERED`, data
judged by `evaluate`) from the run's own numbers.
"""

from landscape.steering_icl._belief import BeliefFit
from landscape.steering_icl._belief import BeliefParameters
from landscape.steering_icl._belief import OutOfFitRangeError
from landscape.steering_icl._belief import bootstrap_replicates
from landscape.steering_icl._belief import fit_belief_dynamics
from landscape.steering_icl._belief import fit_shot_curve
from landscape.steering_icl._belief import flip_boundary
from landscape.steering_icl._belief import interaction_r2_gain
from landscape.steering_icl._belief import leave_one_magnitude_out_r2
from landscape.steering_icl._belief import magnitude_for_shots
from landscape.steering_icl._belief import r_squared
from landscape.steering_icl._belief import shots_for_magnitude
from landscape.steering_icl._criteria import CRITERIA
from landscape.steering_icl._criteria import PREREGISTERED
from landscape.steering_icl._criteria import Criterion
from landscape.steering_icl._criteria import Measurement
from landscape.steering_icl._criteria import Verdict
from landscape.steering_icl._criteria import evaluate
from landscape.steering_icl._measure import KINDS
from landscape.steering_icl._measure import Measured
from landscape.steering_icl._prompts import Prompts
from landscape.steering_icl._prompts import make_prompts
from landscape.steering_icl._run import run
from landscape.steering_icl._sae_vector import SEPARATION_THRESHOLD
from landscape.steering_icl._sae_vector import SAEFeature
from landscape.steering_icl._sae_vector import SAESettings
from landscape.steering_icl._sae_vector import auroc
from landscape.steering_icl._sae_vector import choose_feature
from landscape.steering_icl._sae_vector import sae_feature
from landscape.steering_icl._sae_vector import sae_settings
from landscape.steering_icl._sae_vector import train_site_saes
from landscape.steering_icl._vectors import activation_scale
from landscape.steering_icl._vectors import cosine
from landscape.steering_icl._vectors import random_direction
from landscape.steering_icl._vectors import shot_vector
