"""A live SAE: kept current on the activations of a model that is itself training.

`live_sae` returns a refresher of the training loop (``name``, ``init`` and ``update`` of its
`Refresher` protocol, by duck typing: this floor does not import the loop). Its value, a
`LiveSAEValue` in ``state.refreshed[name]``, holds the SAE with its optimizer state and firing
counts, so it is checkpointed with the run and resumes exactly. At initialisation the SAE is trained
for ``init_steps`` steps on the initial model's activations; then at every step t with
``t % every == 0`` (before the loss, with the parameters the step starts from) it takes ``steps``
more optimizer steps (`sae_train_step`), each on a fresh probe batch of the site's activations drawn
from the dataset with the refresher's key (so a resumed run draws the same batches). The step is the
loop's unbatched scalar, so under the vmap over runs the refresh is a branch taken only when due.

Its decoder rows are directions like any SAE's: ``transforms.span_refresher(directions,
every=every, source=refresher.decoder_source())``, listed after it, keeps the span of
`feature_directions` current for `project_out`, `scale_along` and `attribute`; interventions read
``run.refreshed[name].sae``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from landscape.sae._architectures import SAE
from landscape.sae._metrics import fraction_variance_explained
from landscape.sae._sources import site_rows
from landscape.sae._train import Hyperparams
from landscape.sae._train import Member
from landscape.sae._train import Recipe
from landscape.sae._train import SAEGroup
from landscape.sae._train import SAEState
from landscape.sae._train import check_group
from landscape.sae._train import init_sae_state
from landscape.sae._train import sae_optimizer
from landscape.sae._train import sae_train_step
from landscape.sae._train import member_hyperparams
from landscape.sae._training import FiringState
from landscape.sae._training import initial_b_dec
from landscape.sites import BadInputError

# The live SAE's learning-rate schedule has no decay, so its length only needs to be positive.
_SCHEDULE_STEPS = 1


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LiveSAEValue:
  """What a live SAE keeps in ``state.refreshed[name]``.

  Attributes:
    state: the SAE, its optimizer state, firing counts and hyper-parameters (`SAEState`).
    refreshed_step: int32, the loop step of the last refresh (-1: only the initial fit).
    probe_fve: float32, the fraction of variance explained on the last probe batch after the
      refresh's steps.
    stale_fve: float32, the same on that batch before them (how far the model had moved away).
  """

  state: SAEState
  refreshed_step: jax.Array
  probe_fve: jax.Array
  stale_fve: jax.Array

  @property
  def sae(self) -> SAE:
    return self.state.sae


@dataclasses.dataclass(frozen=True, eq=False)
class LiveSAE:
  """The refresher `live_sae` builds.

  Attributes:
    name: the key of its value in ``state.refreshed``.
    site: the site its SAE reads.
    every: the refresh period in steps (step 0 included); 0: trained once, at initialisation, and
      then frozen.
    steps: SAE optimizer steps per refresh; init_steps: at initialisation.
    recipe: how the SAE trains (`Recipe`).
    hyper: its traced hyper-parameters.
    rows_at: (params, key, step) -> (N, D) float32 probe activations at the site.
    initial_sae: the SAE to start from; None: a new one from the refresher's key.
  """

  name: str
  site: str
  every: int
  steps: int
  init_steps: int
  recipe: Recipe
  hyper: Hyperparams
  rows_at: Callable[[Any, jax.Array, jax.Array], jax.Array]
  initial_sae: SAE | None = None

  def _train(self, state: SAEState, params: Any, key: jax.Array, loop_step: jax.Array,
             first_sae_step: jax.Array, num_steps: int) -> tuple[SAEState, jax.Array, jax.Array]:
    """``num_steps`` SAE steps, each on a fresh probe batch; (state, FVE before, FVE after) on
    the last batch."""

    def one(carry, index):
      state, _ = carry
      step_key = jax.random.fold_in(key, index)
      rows = self.rows_at(params, step_key, loop_step)
      state, _ = sae_train_step(self.recipe, state, rows, first_sae_step + index, step_key,
                                total_steps=_SCHEDULE_STEPS)
      return (state, rows), None

    last_rows = jax.eval_shape(lambda: self.rows_at(params, key, loop_step))
    empty = jnp.zeros(last_rows.shape, last_rows.dtype)
    stale = jnp.zeros((), jnp.float32)
    if num_steps:
      first_rows = self.rows_at(params, jax.random.fold_in(key, 0), loop_step)
      stale = fraction_variance_explained(first_rows, state.sae(first_rows))
    (state, rows), _ = jax.lax.scan(one, (state, empty), jnp.arange(num_steps, dtype=jnp.int32))
    fresh = fraction_variance_explained(rows, state.sae(rows)) if num_steps else stale
    return state, stale, fresh

  def init(self, key: jax.Array, params: Any) -> LiveSAEValue:
    """A new SAE (or ``initial_sae``) trained ``init_steps`` steps on the initial model's
    activations (``b_dec`` of a new SAE from the first probe batch, as the recipe says)."""
    sae_key, probe_key = jax.random.split(key)
    d_in = jax.eval_shape(lambda: self.rows_at(params, probe_key, jnp.zeros((), jnp.int32)))
    d_in = d_in.shape[-1]
    if self.initial_sae is None:
      state = init_sae_state(sae_key, self.recipe, d_in, self.hyper, total_steps=_SCHEDULE_STEPS)
      if self.recipe.b_dec_init != "zero":
        rows = self.rows_at(params, jax.random.fold_in(probe_key, 0), jnp.zeros((), jnp.int32))
        b_dec = initial_b_dec(rows, self.recipe.b_dec_init).astype(state.sae.b_dec.dtype)
        state = dataclasses.replace(state, sae=state.sae.replace(b_dec=b_dec))
    else:
      sae = self.initial_sae
      state = SAEState(sae=sae, opt_state=sae_optimizer(self.recipe, 0.0, _SCHEDULE_STEPS).init(sae),
                       firing=FiringState.zeros(sae.d_sae), hyper=self.hyper)
    state, stale, fresh = self._train(state, params, probe_key, jnp.zeros((), jnp.int32),
                                      jnp.zeros((), jnp.int32), self.init_steps)
    return LiveSAEValue(state=state, refreshed_step=jnp.asarray(-1, jnp.int32), probe_fve=fresh,
                        stale_fve=stale)

  def update(self, value: LiveSAEValue, *, params: Any, step: jax.Array, key: jax.Array,
             run: Any) -> LiveSAEValue:
    """``steps`` SAE steps on the current model's activations when ``step % every == 0``;
    otherwise ``value`` unchanged."""
    del run
    if self.every == 0 or self.steps == 0:
      return value

    def refresh():
      first_sae_step = self.init_steps + (step // self.every) * self.steps
      state, stale, fresh = self._train(value.state, params, key, step, first_sae_step,
                                        self.steps)
      return LiveSAEValue(state=state, refreshed_step=jnp.asarray(step, jnp.int32),
                          probe_fve=fresh, stale_fve=stale)

    return jax.lax.cond(step % self.every == 0, refresh, lambda: value)

  def decoder_source(self) -> Callable[[Any], dict[str, jax.Array]]:
    """``run -> {site: W_dec}``: the current decoder, as `transforms.span_refresher`'s source."""
    return lambda run: {self.site: run.refreshed[self.name].sae.W_dec}


def _is_dataset(data: Any) -> bool:
  """A `landscape.data.Dataset` by its interface (this floor does not import the data floor)."""
  return not isinstance(data, Mapping) and callable(getattr(data, "sample", None))


def _probe_rows(name: str, model: Any, site: str, data: Any, batch_size: int,
                position: int | None):
  fixed = None
  if _is_dataset(data):
    fields = jax.eval_shape(lambda: data.sample(data.arrays, jax.random.PRNGKey(0),
                                                jnp.zeros((), jnp.int32), batch_size))
  else:
    fixed = {key: np.asarray(value) for key, value in data.items()}
    fields = fixed
  if "inputs" not in fields:
    raise BadInputError(f"live_sae {name!r}: the data has no 'inputs'; it has {sorted(fields)}")

  def rows_at(params, key, step):
    if fixed is None:
      inputs = data.sample(data.arrays, key, step, batch_size)["inputs"]
    else:
      inputs = jnp.asarray(fixed["inputs"])
    _, acts = model.forward(params, inputs, capture=[site])
    return site_rows(acts[site], site, position, what=f"live_sae {name!r}")

  return rows_at


def live_sae(name: str, *, model: Any, site: str, data: Any,
             every: int, recipe: Recipe | None = None, architecture: str = "topk",
             d_sae: int | None = None, k: int | None = None, sae: SAE | None = None,
             steps: int = 5, init_steps: int = 100, batch_size: int = 256,
             learning_rate: float = 1e-3, sparsity_coefficient: float = 0.0,
             auxk_coefficient: float = 1 / 32, position: int | None = None) -> LiveSAE:
  """A refresher keeping an SAE at ``site`` current while the model trains (module docstring).

  Args:
    name: the key in ``state.refreshed``.
    model, site: whose activations the SAE reads: a landscape `Model` (anything with
      ``check_sites`` and ``forward(params, inputs, capture=...)``).
    data: a `landscape.data.Dataset` (a probe batch of ``batch_size`` drawn at each SAE step) or a
      fixed batch (a dict with ``inputs``). Its arrays become constants of the compiled step: keep
      it small.
    every: refresh period in steps; 0 trains at initialisation only (a frozen SAE to compare with).
    recipe: how the SAE trains; default ``Recipe(architecture, d_sae, k, warmup_steps=0,
      b_dec_init="mean")`` (no learning-rate warm-up: the SAE takes few steps at a time).
    architecture, d_sae, k: for the default recipe (d_sae is required without ``recipe`` or
      ``sae``).
    sae: an SAE to start from (its architecture and shape must be the recipe's); None: a new one.
    steps: SAE steps per refresh; init_steps: SAE steps at initialisation.
    batch_size: probe examples per SAE step (every position of a sequence site is a row).
    learning_rate, sparsity_coefficient, auxk_coefficient: the SAE's (see `Member`).
    position: use only this index of axis 1 of a (B, T, D) site.

  Raises (at construction, before anything is compiled):
    UnknownSiteError: a site the model lacks. BadInputError: a bad period, step count, recipe, or
    data without ``inputs``.
  """
  model.check_sites([site], what=f"live_sae {name!r}")
  for field, value in (("every", every), ("steps", steps), ("init_steps", init_steps)):
    if not isinstance(value, (int, np.integer)) or value < 0:
      raise BadInputError(f"live_sae {name!r}: {field}={value!r} must be an int >= 0")
  if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
    raise BadInputError(f"live_sae {name!r}: batch_size={batch_size!r} must be an int >= 1")
  if recipe is None:
    if sae is not None:
      architecture, d_sae = sae.architecture, sae.d_sae
      k = getattr(sae, "k", None)
    if d_sae is None:
      raise BadInputError(f"live_sae {name!r}: give d_sae (or a recipe, or an sae to start from)")
    recipe = Recipe(architecture=architecture, d_sae=d_sae, k=k, warmup_steps=0, b_dec_init="mean")
  member = Member(seed=0, learning_rate=learning_rate, sparsity_coefficient=sparsity_coefficient,
                  auxk_coefficient=auxk_coefficient)
  group = SAEGroup(name=name, recipe=recipe, members=(member,))
  check_group(group)
  if sae is not None and (sae.architecture != recipe.architecture or sae.d_sae != recipe.d_sae or
                          getattr(sae, "k", None) != recipe.k):
    raise BadInputError(f"live_sae {name!r}: sae is a {sae.architecture} with d_sae={sae.d_sae}, "
                        f"k={getattr(sae, 'k', None)}; the recipe a {recipe.architecture} with "
                        f"d_sae={recipe.d_sae}, k={recipe.k}")
  rows_at = _probe_rows(name, model, site, data, int(batch_size), position)
  return LiveSAE(name=name, site=site, every=int(every), steps=int(steps),
                 init_steps=int(init_steps), recipe=recipe, hyper=member_hyperparams(group, member),
                 rows_at=rows_at, initial_sae=sae)
