"""Statistics over seeds and the figures of reports."""

from landscape.analysis._statistics import FAILS
from landscape.analysis._statistics import HOLDS
from landscape.analysis._statistics import INCONCLUSIVE
from landscape.analysis._statistics import Estimate
from landscape.analysis._statistics import judge
from landscape.analysis._statistics import judge_any
from landscape.analysis._statistics import mean_interval
from landscape.analysis._statistics import paired_difference
