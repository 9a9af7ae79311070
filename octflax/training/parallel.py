"""Data-parallel execution of the one train step: jit over a device mesh (default) or pmap.

Both wrappers run the same `train_step` and give the same numbers:

- ``'jit'``: `jax.jit` over a `jax.sharding.Mesh` with one axis, ``'data'``.
  The batch is a global array sharded on its first dimension over all devices of
  all processes (each process contributes its own share with
  `jax.make_array_from_process_local_data`); the state is replicated and
  donated. XLA inserts the gradient all-reduce and the cross-device BatchNorm
  reductions itself. The train step keeps the state in device memory in the
  layouts XLA chooses for it (`jax.experimental.layout.Layout.AUTO`): on a GPU,
  a convolution's kernel in cuDNN's layout, so that the step updates each donated
  weight in place where a row-major state costs a transpose and two copies per
  weight. A state entering the step (fresh, restored) is laid out once; what
  leaves the device (checkpoints, `get_state`) is in the logical layout.
- ``'pmap'``: `jax.pmap` over this process's devices (collectives span all
  processes). The state carries a leading device axis; the step averages
  gradients, BatchNorm statistics and metrics with ``lax.pmean`` over the
  ``'data'`` axis, and `prepare_model` gives the model's BatchNorm that axis
  name so that the forward pass normalises with global-batch statistics too.

Exact equality between the two holds for deterministic models; mixup pairs
examples within the global batch under jit and within each device's share under
pmap, and dropout masks differ.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import numpy as np
from jax.experimental.layout import Format, Layout
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from octflax import execution
from octflax.execution import train_compiler_options
from octflax.errors import ConfigError
from octflax.training.config import PARALLEL_MODES
from octflax.training.state import TrainState
from octflax.training.steps import eval_step as _eval_step
from octflax.training.steps import train_step as _train_step

PyTree = Any
Batch = dict[str, Any]

DATA_AXIS = "data"


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
  """Connects the processes of a multi-host run (`jax.distributed.initialize`).

  Call once per process before any other JAX call. On Cloud TPU pods, SLURM and
  other detected clusters the arguments may be left out; elsewhere give all
  three. CPU processes exchange data through gloo.

  Args:
    coordinator_address: ``host:port`` of process 0.
    num_processes: number of processes.
    process_id: this process's index, ``0 .. num_processes - 1``.
  """
  try:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  except (AttributeError, KeyError, ValueError):  # A jax without the option: gloo is built in.
    pass
  jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                             process_id=process_id)


def _in_form(form: execution.Form | None, step: Any) -> Any:
  """``step`` traced in ``form`` (None: ``step``), unless a `execution.use_form` block around the call chose one."""
  def run(*args, **kwargs):
    with execution.use_form(execution.chosen_form() or form):
      return step(*args, **kwargs)
  return step if form is None else functools.wraps(step)(run)


class DataParallel:
  """Runs `train_step` and `eval_step` data-parallel over devices, by jit or pmap.

  Typical use::

    parallel = DataParallel('jit')
    model = parallel.prepare_model(model)
    state = parallel.put_state(create_train_state(model, tx, seed=0, input_shape=...))
    for local_batch in loader:  # this process's share of each global batch
      state, metrics = parallel.train_step(state, parallel.put_batch(local_batch))

  Attributes:
    mode: ``'jit'`` or ``'pmap'``.
    devices: the devices of all processes that take part.
    local_devices: this process's devices among them.
    mesh: the one-axis (``'data'``) device mesh of jit mode.
    axis_name: ``'data'`` under pmap (the model's BatchNorm and the step use
      it), None under jit.
  """

  def __init__(
      self,
      mode: str = "jit",
      devices: Sequence[jax.Device] | None = None,
      *,
      label_smoothing: float = 0.0,
      mixup_alpha: float = 0.0,
  ):
    """Builds the compiled steps.

    Args:
      mode: ``'jit'`` (default) or ``'pmap'``.
      devices: devices to use (default: all devices of all processes).
      label_smoothing: passed to `train_step`.
      mixup_alpha: passed to `train_step`.

    Raises:
      ConfigError: an unknown mode, or pmap over devices of other processes
        given explicitly.
    """
    if mode not in PARALLEL_MODES:
      raise ConfigError(f"parallel must be one of {', '.join(map(repr, PARALLEL_MODES))}; got {mode!r}.")
    self.mode = mode
    self.devices = list(jax.devices() if devices is None else devices)
    self.local_devices = [d for d in self.devices if d.process_index == jax.process_index()]
    self.mesh = Mesh(np.asarray(self.devices), (DATA_AXIS,))
    self.axis_name = DATA_AXIS if mode == "pmap" else None
    self._replicated = NamedSharding(self.mesh, PartitionSpec())
    self._batch_sharding = NamedSharding(self.mesh, PartitionSpec(DATA_AXIS))
    step_kwargs = dict(label_smoothing=label_smoothing, mixup_alpha=mixup_alpha)
    # On an accelerator the steps trace in its form, not in a branch per platform (docs/design.md).
    platform = self.devices[0].platform
    form = None if platform == "cpu" else execution.form_for(platform)
    train_step, eval_step = _in_form(form, _train_step), _in_form(form, _eval_step)
    if mode == "jit":
      # The train step compiles with octflax's train options (on CPU, 0.79-1.00x the time of
      # XLA's defaults; `octflax.execution.compiler`), the eval step with XLA's defaults. jax.pmap takes
      # no compiler options, so the pmap steps keep XLA's defaults.
      # The state in the layouts XLA picks (Layout.AUTO); `train_step` lays a state out for them.
      state_format = Format(Layout.AUTO, self._replicated)
      self._train = jax.jit(
          functools.partial(train_step, **step_kwargs),
          in_shardings=(state_format, self._batch_sharding),
          out_shardings=(state_format, self._replicated),
          donate_argnums=0, compiler_options=train_compiler_options(self.devices[0].platform))
      self._compiled: dict[Any, Any] = {}  # (state treedef, batch avals) -> `_compiled_step`'s triple
      self._laid_out: Any = None  # the last state the step returned, already in its formats
      self._eval = jax.jit(eval_step, in_shardings=(self._replicated, self._batch_sharding),
                           out_shardings=self._replicated)
    else:
      pmap_devices = None if devices is None else self.local_devices
      if devices is not None and len(self.local_devices) != len(self.devices):
        raise ConfigError("pmap runs on this process's devices; pass devices=None on multi-process runs.")
      self._train = jax.pmap(functools.partial(train_step, axis_name=DATA_AXIS, **step_kwargs),
                             axis_name=DATA_AXIS, donate_argnums=0, devices=pmap_devices)
      self._eval = jax.pmap(functools.partial(eval_step, axis_name=DATA_AXIS), axis_name=DATA_AXIS,
                            devices=pmap_devices)

  @property
  def num_devices(self) -> int:
    """Devices over all processes."""
    return len(self.devices)

  def prepare_model(self, model: Any) -> Any:
    """The model as this mode runs it: under pmap, BatchNorm reduces over the ``'data'`` axis.

    Models with an ``axis_name`` attribute (all of `octflax.models`) get
    ``axis_name='data'`` under pmap; under jit the model is returned unchanged.
    """
    if self.mode == "pmap" and hasattr(model, "axis_name"):
      return model.clone(axis_name=DATA_AXIS)
    return model

  # Placement -------------------------------------------------------------------

  def put_state(self, state: TrainState) -> TrainState:
    """Places a (host) state for this mode: replicated over the mesh, or one copy per device."""
    if self.mode == "jit":
      def put(x):
        if isinstance(x, jax.Array) and x.sharding == self._replicated:
          return x  # Restored from a checkpoint into `abstract_state`: already in place.
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, self._replicated, lambda index: x[index])
    else:
      count = len(self.local_devices)
      def put(x):
        x = np.asarray(x)
        return np.broadcast_to(x, (count,) + x.shape)
    return jax.tree.map(put, state)

  def get_state(self, state: TrainState) -> TrainState:
    """One copy of the state: the global replicated arrays (jit) or device 0's copy (pmap)."""
    if self.mode == "jit":
      return state
    return jax.tree.map(lambda x: np.asarray(jax.device_get(x[0])), state)

  def abstract_state(self, host_state: TrainState) -> TrainState:
    """The restore target for a checkpoint: shapes, dtypes and placement of this mode.

    What a checkpoint restores into it goes through `put_state` like a fresh
    state (a no-op under jit, where it is restored in place).
    """
    if self.mode == "jit":
      return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=self._replicated), host_state)
    return jax.tree.map(np.asarray, host_state)

  def abstract_batch(self, global_batch: int, image_shape: Sequence[int]) -> Batch:
    """A global training batch as shapes, sharded as `put_batch` places it (jit mode).

    With `abstract_state`, what `jitted_train_step` lowers for without data (`octflax.aot`).
    """
    return {"image": jax.ShapeDtypeStruct((global_batch, *image_shape), np.float32, sharding=self._batch_sharding),
            "label": jax.ShapeDtypeStruct((global_batch,), np.int32, sharding=self._batch_sharding)}

  @property
  def jitted_train_step(self) -> Any:
    """The jit train step (jit mode), to ``.lower(state, batch)`` ahead of time."""
    if self.mode != "jit":
      raise ConfigError("only the jit step is lowered ahead of time; use --config.parallel=jit.")
    return self._train

  def put_batch(self, batch: Batch) -> Batch:
    """Turns this process's share of a global batch into the step's input.

    jit: a global array sharded on ``'data'`` (`jax.make_array_from_process_local_data`).
    pmap: NumPy arrays reshaped to [local devices, per-device batch, ...].
    """
    if self.mode == "jit":
      return jax.tree.map(lambda x: jax.make_array_from_process_local_data(self._batch_sharding, x), batch)
    count = len(self.local_devices)

    def split(x):
      if x.shape[0] % count:
        raise ConfigError(f"a local batch of {x.shape[0]} does not split over {count} local devices.")
      return x.reshape((count, x.shape[0] // count) + x.shape[1:])

    return jax.tree.map(split, batch)

  def get_metrics(self, metrics: PyTree) -> PyTree:
    """Metrics of a step as host NumPy values (device 0's copy under pmap)."""
    if self.mode == "pmap":
      metrics = jax.tree.map(lambda x: x[0], metrics)
    return jax.device_get(metrics)

  # Steps -----------------------------------------------------------------------

  def train_step(self, state: TrainState, batch: Batch) -> tuple[TrainState, PyTree]:
    """`train_step` on all devices; ``state`` is donated (do not use it afterwards).

    Under jit the step is compiled once per batch shape with the state's layouts left to XLA; a
    state that is not the step's own last output is first put in those layouts (`state_formats`).
    """
    if self.mode != "jit":
      return self._train(state, batch)
    compiled, formats, stable = self._compiled_step(state, batch)
    if state is not self._laid_out:
      state = jax.device_put(state, formats, donate=True)
    state, metrics = compiled(state, batch)
    self._laid_out = state if stable else None
    return state, metrics

  def _compiled_step(self, state: TrainState, batch: Batch) -> tuple[Any, PyTree, bool]:
    """The compiled jit step for these shapes, its state formats, and whether its output state keeps them."""
    abstract = lambda tree: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)
    key = (jax.tree.structure(state), tuple((x.shape, str(x.dtype)) for x in jax.tree.leaves(batch)))
    if key not in self._compiled:
      compiled = self._train.lower(abstract(state), abstract(batch)).compile()
      formats = compiled.input_formats[0][0]
      self._compiled[key] = (compiled, formats, compiled.output_formats[0] == formats)
    return self._compiled[key]

  def eval_step(self, state: TrainState, batch: Batch) -> PyTree:
    """`eval_step` on all devices: sums over the global batch."""
    return self._eval(state, batch)


__all__ = ["DATA_AXIS", "DataParallel", "initialize_distributed"]
