"""Datasets as pure functions of (data key, step), and the tasks landscape ships."""

from landscape.data._dataset import Batch
from landscape.data._dataset import Dataset
from landscape.data._dataset import Sampler
from landscape.data._dataset import array_dataset
from landscape.data._dataset import generator_dataset
from landscape.data._dataset import permuted_indices
from landscape.data._dataset import split_indices
from landscape.data._dataset import subset_sampler
from landscape.data._dataset import with_probe_fields
from landscape.data._digits import DECOY_CORNERS
from landscape.data._digits import DECOY_MODES
from landscape.data._digits import add_decoy
from landscape.data._digits import decoy_digits
from landscape.data._digits import digits
from landscape.data._digits import digits_splits
from landscape.data._digits import patch_value
from landscape.data._tokens import MARKER_MODES
from landscape.data._tokens import TokenTask
from landscape.data._tokens import marker_dataset
from landscape.data._tokens import marker_task
from landscape.data._tokens import markov_chain_task
from landscape.data._tokens import token_dataset
from landscape.data._toy_colors import RULE_MODES
from landscape.data._toy_colors import toy_color_images
from landscape.data._toy_colors import toy_colors
