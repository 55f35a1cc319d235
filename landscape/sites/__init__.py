"""Named sites of a forward pass, how parameters touch them, and bases of directions there."""

from landscape.sites._basis import Basis
from landscape.sites._basis import BasisError
from landscape.sites._basis import ORTHONORMAL_ATOL
from landscape.sites._basis import check_basis
from landscape.sites._basis import check_rows
from landscape.sites._basis import make_basis
from landscape.sites._basis import orthonormalize
from landscape.sites._basis import path_string
from landscape.sites._errors import BadInputError
from landscape.sites._sites import ALL_SITES
from landscape.sites._sites import Intervention
from landscape.sites._sites import ParamLink
from landscape.sites._sites import ScannedSites
from landscape.sites._sites import SiteShapeError
from landscape.sites._sites import ScopedSites
from landscape.sites._sites import Sites
from landscape.sites._sites import UnknownSiteError
from landscape.sites._sites import apply_intervention
from landscape.sites._sites import before_interventions
from landscape.sites._sites import check_intervention
from landscape.sites._sites import check_site_names
