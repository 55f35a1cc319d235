"""Interventions at sites: ablate, steer, clamp, scale; per-example steering and masks;
backward-only variants; gradient reversal; gradient routing.

An intervention is any function ``act -> act`` of a site's activation (these are pytrees of arrays,
so they can be built from traced values in a jitted step). `steer` adds its vector at every
position, or with ``positions`` at chosen positions of the sequence axis only. Per example:
`steer_examples` adds a vector per example; `mask_examples` multiplies by a mask per example, in
the forward pass, the backward pass, or both. Gradient routing (Cloud et al., 2024, arXiv
2410.04332) is the backward-only mask, `route_gradients`: the forward pass is unchanged and example
b's gradient reaches only the parameters behind the coordinates its mask keeps.
"""

from landscape.interventions._interventions import Ablate
from landscape.interventions._interventions import BackwardOnly
from landscape.interventions._interventions import Clamp
from landscape.interventions._interventions import MASK_MODES
from landscape.interventions._interventions import MaskExamples
from landscape.interventions._interventions import ReverseGradient
from landscape.interventions._interventions import Scale
from landscape.interventions._interventions import Steer
from landscape.interventions._interventions import SteerExamples
from landscape.interventions._interventions import ablate
from landscape.interventions._interventions import clamp
from landscape.interventions._interventions import mask_examples
from landscape.interventions._interventions import reverse_gradient
from landscape.interventions._interventions import route_gradients
from landscape.interventions._interventions import scale
from landscape.interventions._interventions import steer
from landscape.interventions._interventions import steer_examples
