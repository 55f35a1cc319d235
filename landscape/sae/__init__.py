"""Sparse autoencoders: architectures, losses, training recipes, metrics, SAELens files, and SAE
features as directions.

An SAE is a pytree of ``W_enc`` (D, F), ``b_enc`` (F,), ``W_dec`` (F, D), ``b_dec`` (D,) and, for
JumpReLU and BatchTopK, a threshold, with ``encode``, ``decode`` and ``__call__``:

    sae = sae_lib.init_sae(key, "topk", d_in=64, d_sae=1024, k=8)
    sae = sae_lib.init_b_dec(sae, acts, "geometric_median")
    optimizer = sae_lib.unit_norm_decoder(optax.adam(1e-3))
    (loss, aux), grads = jax.value_and_grad(sae_lib.topk_loss, has_aux=True)(
        sae, acts, dead=sae_lib.dead_latents(firing, 10_000_000))
    updates, opt_state = optimizer.update(grads, opt_state, sae)
    sae = optax.apply_updates(sae, updates)
    firing = sae_lib.update_firing(firing, aux.fired, acts.shape[0])

Many SAEs of one shape train in one program by `stack_saes` and `jax.vmap` of the step. The
training itself (`init_train_state`, `make_train_step`: groups of SAEs over one activation stream)
is in `_train`; the stream is an `ActivationSource`: a planted dictionary's (`planted_source`)
here, a model's site or arrays from ``landscape.sae_sources`` (they need the model and data
floors, which this one does not import). ``landscape.train_sae.run`` adds the files (metrics,
checkpoints, report). `live_sae` keeps an SAE current during a model's training.
"""

from landscape.sae._architectures import SAE
from landscape.sae._architectures import BatchTopKSAE
from landscape.sae._architectures import JumpReLUSAE
from landscape.sae._architectures import StandardSAE
from landscape.sae._architectures import TopKSAE
from landscape.sae._architectures import init_sae
from landscape.sae._features import ClampCodes
from landscape.sae._features import FeatureLabels
from landscape.sae._features import ablate_features
from landscape.sae._features import clamp_codes
from landscape.sae._features import clamp_feature
from landscape.sae._features import feature_basis
from landscape.sae._features import feature_directions
from landscape.sae._features import feature_labels
from landscape.sae._features import select_features
from landscape.sae._features import steer_feature
from landscape.sae._losses import LossAux
from landscape.sae._losses import SAEMetrics
from landscape.sae._losses import auxk_loss
from landscape.sae._losses import batchtopk_loss
from landscape.sae._losses import jumprelu_loss
from landscape.sae._losses import loss_for
from landscape.sae._losses import standard_loss
from landscape.sae._losses import topk_loss
from landscape.sae._metrics import DensityCounts
from landscape.sae._metrics import DensityHistogram
from landscape.sae._metrics import DownstreamMetrics
from landscape.sae._metrics import dead_fraction
from landscape.sae._metrics import density_histogram
from landscape.sae._metrics import downstream_metrics
from landscape.sae._metrics import feature_density
from landscape.sae._metrics import fraction_variance_explained
from landscape.sae._metrics import kl_divergence
from landscape.sae._metrics import label_cross_entropy
from landscape.sae._metrics import l0
from landscape.sae._metrics import model_logits_with
from landscape.sae._metrics import normalized_mse
from landscape.sae._metrics import update_density
from landscape.sae._live import LiveSAE
from landscape.sae._live import LiveSAEValue
from landscape.sae._live import live_sae
from landscape.sae._planted import PlantedDictionary
from landscape.sae._planted import Recovery
from landscape.sae._planted import feature_recovery
from landscape.sae._planted import planted_dictionary
from landscape.sae._planted import sample_planted
from landscape.sae._saelens import CONFIG_FILENAME
from landscape.sae._saelens import WEIGHTS_FILENAME
from landscape.sae._saelens import LoadedSAE
from landscape.sae._saelens import SAEFileError
from landscape.sae._saelens import check_sae_width
from landscape.sae._saelens import load_saelens
from landscape.sae._saelens import save_saelens
from landscape.sae._sources import ActivationSource
from landscape.sae._sources import planted_source
from landscape.sae._stacking import stack_saes
from landscape.sae._stacking import unstack_saes
from landscape.sae._topk import top_k
from landscape.sae._topk import two_stage_top_k
from landscape.sae._train import EvalStats
from landscape.sae._train import Hyperparams
from landscape.sae._train import Member
from landscape.sae._train import Recipe
from landscape.sae._train import SAEGroup
from landscape.sae._train import SAEState
from landscape.sae._train import SAETrainState
from landscape.sae._train import evaluate_sae
from landscape.sae._train import init_train_state
from landscape.sae._train import make_evaluate
from landscape.sae._train import make_train_chunk
from landscape.sae._train import make_train_step
from landscape.sae._train import sae_optimizer
from landscape.sae._train import sae_train_step
from landscape.sae._train import trained_saes
from landscape.sae._training import FiringState
from landscape.sae._training import dead_latents
from landscape.sae._training import fold_normalization
from landscape.sae._training import init_b_dec
from landscape.sae._training import k_annealing
from landscape.sae._training import normalization_scale
from landscape.sae._training import positive_threshold
from landscape.sae._training import remove_parallel_decoder_gradient
from landscape.sae._training import renormalize_decoder
from landscape.sae._training import resample_dead_latents
from landscape.sae._training import reset_latent_moments
from landscape.sae._training import unit_norm_decoder
from landscape.sae._training import update_batchtopk_threshold
from landscape.sae._training import update_firing
