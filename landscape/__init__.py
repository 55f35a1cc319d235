"""landscape: loss-landscape shaping in JAX.

Use interpretable directions at a model's named sites while it trains: constrain each update along
them (`project_out`, `project_onto`, `scale_along`, `attribute`), intervene on activations at sites
(`interventions`), and reshape the loss with auxiliary objectives over them (`objectives`).

Subpackages, lowest floor first: `sites`, `data`, `models`, `directions`, `interventions`,
`transforms`, `sae`, `objectives`, `training`, `analysis`. Experiments: `landscape.supervised`,
`landscape.block_vs_reshape`, `landscape.train_sae`, `landscape.concept_attribution`,
`landscape.steering_icl`, `landscape.benchmark` (each has ``run(config, workdir)``).
"""

from landscape import analysis
from landscape import data
from landscape import directions
from landscape import interventions
from landscape import models
from landscape import objectives
from landscape import sae
from landscape import sae_sources
from landscape import sites
from landscape import training
from landscape import transforms
from landscape.directions import Basis
from landscape.directions import make_basis
from landscape.models import Model
from landscape.objectives import RunView
from landscape.objectives import Term
from landscape.objectives import compose
from landscape.objectives import hyperparameter
from landscape.objectives import term
from landscape.sites import BadInputError
from landscape.sites import Sites
from landscape.training import TrainState
from landscape.training import train
from landscape.transforms import attribute
from landscape.transforms import mask_updates
from landscape.transforms import project_onto
from landscape.transforms import project_out
from landscape.transforms import scale_along
from landscape.transforms import site_directions

__version__ = "0.1.0"
