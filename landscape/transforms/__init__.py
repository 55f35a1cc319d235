"""Optax gradient transforms that act on each update through concept directions.

Directions are given per parameter leaf (`param_directions`, or a pytree of (K, *leaf.shape) or
None), as bases at sites mapped onto the parameters through the model's site links
(`site_directions`), or as the span of selected rows of a large dictionary
(`dictionary_directions`, its span re-estimated during training by `span_refresher`). Each is
lowered once, when built, to one per-parameter form (`Directions`: for each touched leaf, the axis,
the basis and the site link). The transforms remove (`project_out`), keep (`project_onto`) or
rescale (`scale_along`) the update's component along them, or report it (`attribute`); their
docstrings state the mapping rule, the order and the precision.
"""

from landscape.transforms._attribution import AttributeState
from landscape.transforms._attribution import attribute
from landscape.transforms._attribution import decompose
from landscape.transforms._attribution import label_metrics
from landscape.transforms._dictionary import DictionarySelection
from landscape.transforms._dictionary import SpanRefresher
from landscape.transforms._dictionary import dictionary_directions
from landscape.transforms._dictionary import span_basis
from landscape.transforms._dictionary import span_refresher
from landscape.transforms._directions import Along
from landscape.transforms._directions import Directions
from landscape.transforms._directions import DirectionsError
from landscape.transforms._directions import HeldDirectionsState
from landscape.transforms._directions import ROLES
from landscape.transforms._directions import TouchedParameter
from landscape.transforms._lowering import param_directions
from landscape.transforms._lowering import site_directions
from landscape.transforms._lowering import touched_parameters
from landscape.transforms._masking import mask_updates
from landscape.transforms._projection import project_out
from landscape.transforms._projection import project_onto
from landscape.transforms._projection import scale_along
