"""What is each update teaching? Concept attribution over SAE features, and selective
amplify/suppress ("pirate speak versus arithmetic").

A base GPT is pre-trained on plain text (`landscape.data.PirateArithmetic`: sums whose answers are
random there, and prose); an SAE read at a middle site of its residual stream names the features
that respond to the pirate dialect (style) and to correct sums (skill). Fine-tuning on correct sums
written in the dialect teaches both. Every arm attributes each update to the SAE's features (the
update of every parameter writing into the residual stream, projected onto each decoder row, and
its span share in each feature group's span: `_measures`) and differs in what it does with them:

* baselines: ``plain``, ``oracle`` (the same examples, plain), ``plain_live`` (plain's updates, attributed
  along a live SAE's current rows and spans), ``plain_long``;
* update gains (`transforms.scale_along` on the span of chosen features' decoder rows, on every
  writer and reader of the residual stream: `coverage_links`):
  ``suppress`` (style, gain 0 and a negative gain), ``suppress_live`` (the span of a live SAE's
  current style rows), ``amplify`` (skill), ``suppress_amplify``, ``suppress_long``;
* controls: the same gains on random features, and on the features chosen by activation alone;
* activation-space: ``ablate`` (concept-ablation fine-tuning), ``steering`` (preventative);
* reshaping: ``concept_penalty`` on the style span.

Each arm is one value in ``ARM_REGISTRY``; arms that differ only in which features their gains act
on and in the gains are points of one job's grid (``JOB_REGISTRY``), trained in one program (seeds
times the grid), warm started from the base model. The report judges the pre-registered criteria (``PREREGISTERED``,
data judged by ``evaluate``) from the run's own files, with 95% intervals over seeds, and beside
them the declared post-hoc variants judged on the style margin (``POST_HOC``) and the declared
span-share check (``DECLARED``).
"""

from landscape.concept_attribution._arms import ARM_REGISTRY
from landscape.concept_attribution._arms import ARMS
from landscape.concept_attribution._arms import FAMILIES
from landscape.concept_attribution._arms import JOB_REGISTRY
from landscape.concept_attribution._arms import Arm
from landscape.concept_attribution._arms import Job
from landscape.concept_attribution._arms import plan_arm
from landscape.concept_attribution._arms import scale_along_by
from landscape.concept_attribution._criteria import DECLARED
from landscape.concept_attribution._criteria import POST_HOC
from landscape.concept_attribution._criteria import PREREGISTERED
from landscape.concept_attribution._criteria import Criterion
from landscape.concept_attribution._criteria import Verdict
from landscape.concept_attribution._criteria import evaluate
from landscape.concept_attribution._measures import SpanShares
from landscape.concept_attribution._measures import group_span_shares
from landscape.concept_attribution._measures import span_share_attribution
from landscape.concept_attribution._measures import span_shares
from landscape.concept_attribution._run import run
from landscape.concept_attribution._run import validate
from landscape.concept_attribution._setting import FeatureGroups
from landscape.concept_attribution._setting import FeatureSpans
from landscape.concept_attribution._setting import GroupMasks
from landscape.concept_attribution._setting import LabellingStability
from landscape.concept_attribution._setting import ProbeSets
from landscape.concept_attribution._setting import activation_matched_group
from landscape.concept_attribution._setting import SAEMetrics
from landscape.concept_attribution._setting import Setting
from landscape.concept_attribution._setting import build_setting
from landscape.concept_attribution._setting import coverage_links
from landscape.concept_attribution._setting import label_features
