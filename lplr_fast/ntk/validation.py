"""Input validation and model-state guards for the NTK engine."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from .capture import quiet_vmap

BATCHNORM_OPTIONS = ("error", "eval", "batch")


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Parameters the NTK differentiates (requires_grad=True), by qualified name."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def train_mode_batchnorms(model: nn.Module) -> list[str]:
    """Names of BatchNorm modules in training mode (they couple the samples of a batch)."""
    return [
        name or "<root>"
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
    ]


def active_dropouts(model: nn.Module) -> list[str]:
    return [
        name or "<root>"
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.training and m.p > 0
    ]


def unwrap_compiled(model: Any) -> Any:
    """The module a ``torch.compile(model)`` wrapper runs (compiled submodules and
    ``module.compile()`` are run eagerly by :func:`forward_context` instead)."""
    while isinstance(getattr(model, "_orig_mod", None), nn.Module) and type(model).__name__ == (
        "OptimizedModule"
    ):
        model = model._orig_mod
    return model


def _compiled_inside(model: nn.Module) -> list[str]:
    return [
        name or "<root>"
        for name, m in model.named_modules()
        if type(m).__name__ == "OptimizedModule" or getattr(m, "_compiled_call_impl", None)
    ]


def all_finite(tensors: list[torch.Tensor]) -> list[bool]:
    """Per tensor: no NaN/Inf, with one host synchronisation for all of them."""
    if not tensors:
        return []
    flags = torch.stack([torch.isfinite(t).all() for t in tensors])
    return [bool(f) for f in flags.tolist()]


def check_model(model: nn.Module, batchnorm: str) -> None:
    """Raise a clear error for models whose per-sample NTK is undefined or empty (dtypes are
    checked by :func:`check_dtypes`, once a ``dtype=`` copy is made)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if batchnorm not in BATCHNORM_OPTIONS:
        raise ValueError(f"batchnorm must be one of {BATCHNORM_OPTIONS}, got {batchnorm!r}")
    _check_lazy(model)
    params = trainable_parameters(model)
    if not params:
        raise ValueError("model has no trainable parameters (requires_grad=True): its NTK is zero")
    for name, p in params.items():
        if not torch.is_floating_point(p) or p.is_complex():
            raise TypeError(f"parameter {name!r} has non-floating dtype {p.dtype}")
    names = list(params)
    with torch.no_grad():
        finite = all_finite([p.detach() for p in params.values()])
    for name, ok in zip(names, finite, strict=True):
        if not ok:
            raise ValueError(f"parameter {name!r} contains NaN or Inf")
    scripted = [
        name or "<root>"
        for name, m in model.named_modules()
        if isinstance(m, torch.jit.ScriptModule)
    ]
    if scripted:
        raise NotImplementedError(
            f"module(s) {scripted} are TorchScript (torch.jit.script/trace): the NTK engine "
            "needs to observe module calls, which TorchScript hides. Pass the original "
            "nn.Module."
        )
    if _compiled_inside(model) and not hasattr(torch.compiler, "set_stance"):
        raise NotImplementedError(
            f"module(s) {_compiled_inside(model)} are torch.compile'd and this torch "
            f"({torch.__version__}) cannot run them eagerly; pass the uncompiled model"
        )
    _check_max_norm(model)
    dropouts = active_dropouts(model)
    if dropouts:
        raise ValueError(
            f"dropout module(s) {dropouts} are in training mode: the network is random and its "
            "NTK is undefined. Call model.eval() (or set p=0) before computing the NTK."
        )
    bns = train_mode_batchnorms(model)
    if bns and batchnorm == "error":
        raise ValueError(
            f"BatchNorm module(s) {bns} are in training mode: they couple the samples of a batch, "
            "so the per-sample NTK is undefined. Pass batchnorm='eval' to use the running "
            "statistics (the model is left untouched), batchnorm='batch' for the exact "
            "batch-coupled kernel (slow), or call model.eval()."
        )


def _check_lazy(model: nn.Module) -> None:
    for mname, module in model.named_modules():
        for attr, p in module._parameters.items():
            if isinstance(p, nn.parameter.UninitializedParameter):
                name = f"{mname}.{attr}" if mname else attr
                raise ValueError(
                    f"parameter {name!r} is uninitialised (lazy module {mname or '<root>'!r}, "
                    f"{type(module).__name__}): run the model once on a batch, model(x), to "
                    "initialise its parameters, then compute its NTK"
                )


def _check_max_norm(model: nn.Module) -> None:
    for name, m in model.named_modules():
        if isinstance(m, nn.Embedding | nn.EmbeddingBag) and m.max_norm is not None:
            raise ValueError(
                f"{type(m).__name__} {name or '<root>'!r} has max_norm={m.max_norm}: its forward "
                "renormalises the looked-up rows of its weight in place, so the network's "
                "function depends on which rows earlier calls touched and the NTK is not "
                "defined by the current parameters (and the call would change them). "
                "Renormalise the weight once yourself (e.g. with torch.no_grad(): "
                "w.copy_(torch.renorm(w, 2, 0, max_norm))) and set max_norm=None."
            )


def check_dtypes(model: nn.Module) -> None:
    """One floating dtype for all trainable parameters, float32 or float64."""
    params = trainable_parameters(model)
    dtypes = sorted({str(p.dtype) for p in params.values()})
    if len(dtypes) > 1:
        raise TypeError(
            f"the model's trainable parameters mix dtypes {dtypes}; pass dtype=torch.float64 "
            "(or torch.float32) to compute the NTK of a copy in one dtype"
        )
    dtype = next(iter(params.values())).dtype
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(
            f"the model's parameters are {dtype}; the NTK engine computes in float32 or "
            "float64 (half precision cannot carry the kernel's sums): pass "
            "dtype=torch.float32 (or torch.float64) to compute the NTK of a copy in that dtype"
        )


def check_inputs(model: nn.Module, x1: torch.Tensor, x2: torch.Tensor | None) -> None:
    """Shapes, dtypes, devices and finiteness of the inputs (one host synchronisation).
    Integer and boolean inputs are passed to the model as they are (token ids, masks: the
    NTK is taken w.r.t. the parameters, not the inputs)."""
    param = next(iter(trainable_parameters(model).values()))
    device = param.device
    floating = []
    for name, x in (("x1", x1), ("x2", x2)):
        if x is None:
            continue
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() < 1 or x.shape[0] == 0:
            raise ValueError(
                f"{name} must have a non-empty leading batch axis, got {tuple(x.shape)}"
            )
        if x.device != device:
            raise ValueError(f"{name} is on {x.device} but the model's parameters are on {device}")
        if x.is_complex():
            raise TypeError(f"{name} has unsupported dtype {x.dtype}")
        if torch.is_floating_point(x):
            if x.dtype != param.dtype:
                raise TypeError(
                    f"{name} has dtype {x.dtype} but the model's parameters are {param.dtype}; "
                    f"pass dtype={x.dtype} (or dtype={param.dtype}) to compute the NTK in one "
                    "dtype (the model is copied, never modified)"
                )
            floating.append((name, x))
    finite = all_finite([x for _, x in floating])
    for (name, _), ok in zip(floating, finite, strict=True):
        if not ok:
            raise ValueError(f"{name} contains NaN or Inf")
    if x2 is not None:
        if x1.shape[1:] != x2.shape[1:]:
            raise ValueError(
                f"x1 and x2 have different per-sample shapes {tuple(x1.shape[1:])} and "
                f"{tuple(x2.shape[1:])}"
            )
        if x1.dtype != x2.dtype:
            raise TypeError(f"x1 has dtype {x1.dtype} but x2 has dtype {x2.dtype}")


@contextlib.contextmanager
def explain_input_dtype(x: torch.Tensor) -> Iterator[None]:
    """A model that fails on integer or boolean inputs gets an error saying so."""
    try:
        yield
    except (RuntimeError, TypeError) as err:
        if torch.is_floating_point(x) or isinstance(err, _InputDtypeError):
            raise
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise _InputDtypeError(
            f"x1 has dtype {x.dtype} and the model failed on it ({first}): pass "
            "floating-point inputs, or convert them inside the model's forward"
        ) from err


class _InputDtypeError(TypeError):
    pass


@contextlib.contextmanager
def batchnorms_in_eval(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Temporarily put train-mode BatchNorms in eval mode; flags are restored on exit."""
    switched = []
    if enabled:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training:
                m.eval()
                switched.append(m)
    try:
        yield
    finally:
        for m in switched:
            m.train()


def _user_module(module: nn.Module) -> bool:
    """Whether ``module``'s class is defined outside torch (torch.nn's own forwards do not
    modify their parameters; nn.Embedding(max_norm=...) is refused up front)."""
    return not type(module).__module__.startswith("torch.")


class StateGuard:
    """The model's state as it was when the call began, for every forward the engine runs.

    * Buffers are put back before each forward of the whole model (a pre-hook on the root
      while :meth:`installed`), and after: forwards that update buffers (spectral_norm's
      power iteration in train mode) then all compute the same function, and a module
      applied twice sees its first call's update, as ``model(x)`` does.
    * Parameters modified in place by a forward (seen by their version counters after every
      forward, no synchronisation) raise ``ValueError``: the network's function would depend
      on how often it ran. Parameters of user-defined modules are copied around the first
      forward and restored before raising (the usual culprit: a layer clipping its own
      weight); those of torch.nn modules are not copied (their forwards do not write them).
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.saved: dict[nn.Module, list[tuple[str, torch.Tensor, torch.Tensor]]] = {}
        self.versions: dict[int, int] = {}
        for module in dict(model.named_modules()).values():
            for name, buf in module._buffers.items():
                if buf is not None:
                    entry = (name, buf, buf.detach().clone())
                    self.saved.setdefault(module, []).append(entry)
                    self.versions[id(buf)] = buf._version
        self.parameters = dict(model.named_parameters())
        self.param_versions = {name: p._version for name, p in self.parameters.items()}
        self.first = True

    def restore_module(self, module: nn.Module) -> None:
        """Put back what was replaced or modified in place (seen by the version counter, no
        synchronisation; untouched buffers are left alone, so autograd's saved tensors stay
        valid)."""
        with torch.no_grad():
            for name, buf, copy in self.saved.get(module, ()):
                if module._buffers.get(name) is not buf:
                    module._buffers[name] = buf
                if buf._version == self.versions[id(buf)]:
                    continue
                if buf.shape == copy.shape:
                    buf.copy_(copy)
                else:
                    buf.data = copy.clone()
                self.versions[id(buf)] = buf._version

    def restore(self) -> None:
        for module in self.saved:
            self.restore_module(module)

    def modified_parameters(self) -> list[str]:
        return [
            name for name, p in self.parameters.items() if p._version != self.param_versions[name]
        ]

    def check_parameters(self) -> None:
        changed = self.modified_parameters()
        if changed:
            raise ValueError(
                f"the model's forward modified parameter(s) {changed} in place (e.g. clipping "
                "or renormalising a weight inside forward): the network then computes a "
                "different function every time it runs, so its NTK at the current parameters "
                "is undefined. Apply that change once yourself, outside forward, and compute "
                "the NTK of the resulting model."
            )

    @contextlib.contextmanager
    def _first_forward_snapshot(self) -> Iterator[None]:
        """Copies of user-defined modules' parameters while the first forward context is
        open; any that a forward modified are put back on exit."""
        if not self.first:
            yield
            return
        self.first = False
        owned = {
            id(p)
            for m in self.model.modules()
            if _user_module(m)
            for p in m._parameters.values()
            if p is not None
        }
        copies = {name: p.detach().clone() for name, p in self.parameters.items() if id(p) in owned}
        try:
            yield
        finally:
            with torch.no_grad():
                for name in self.modified_parameters():
                    if name in copies:
                        self.parameters[name].copy_(copies[name])

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        # The hooks act on this model only, not on copies of it (a deepcopy keeps its hooks).
        def before(module: nn.Module, args: Any) -> None:
            if module is self.model:
                self.restore()

        def after(module: nn.Module, args: Any, output: Any) -> None:
            if module is self.model:
                self.check_parameters()

        before.lplr_internal = True  # type: ignore[attr-defined]
        after.lplr_internal = True  # type: ignore[attr-defined]
        handles = [
            self.model.register_forward_pre_hook(before, prepend=True),
            self.model.register_forward_hook(after),
        ]
        try:
            with self._first_forward_snapshot():
                yield
        finally:
            for h in handles:
                h.remove()


@contextlib.contextmanager
def full_precision() -> Iterator[None]:
    """TF32 off for cuBLAS and cuDNN while the engine computes (PyTorch enables it for
    cuDNN convolutions by default, which would cost float32 kernels three digits)."""
    matmul = torch.backends.cuda.matmul.allow_tf32
    cudnn = torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul
        torch.backends.cudnn.allow_tf32 = cudnn


def _eager_stance() -> contextlib.AbstractContextManager:
    set_stance = getattr(torch.compiler, "set_stance", None)
    return set_stance("force_eager") if set_stance is not None else contextlib.nullcontext()


@contextlib.contextmanager
def dense_embedding_gradients(model: nn.Module) -> Iterator[None]:
    """``sparse=False`` on sparse embeddings while the engine runs: the same function and
    derivative, with dense gradients that per-sample transforms can reshape and batch."""
    switched = [
        m
        for m in model.modules()
        if isinstance(m, nn.Embedding | nn.EmbeddingBag) and getattr(m, "sparse", False)
    ]
    for m in switched:
        m.sparse = False
    try:
        yield
    finally:
        for m in switched:
            m.sparse = True


@contextlib.contextmanager
def parametrizations_uncached() -> Iterator[None]:
    """Parametrizations recomputed at every access while the engine runs, also inside a
    user's ``parametrize.cached()`` block (a cached weight's graph would be freed by the
    engine's first backward pass; the values are the same)."""
    from torch.nn.utils import parametrize

    enabled = getattr(parametrize, "_cache_enabled", 0)
    if not enabled:
        yield
        return
    parametrize._cache_enabled = 0
    try:
        yield
    finally:
        parametrize._cache_enabled = enabled


@contextlib.contextmanager
def forward_context(
    model: nn.Module, bn_eval: bool, guard: StateGuard | None = None
) -> Iterator[None]:
    """What every forward of the engine runs under, entered only around the computation
    (never across a yield): gradients on (also inside no_grad / inference_mode),
    torch.compile'd modules run eagerly, cuDNN off for eval-mode recurrent layers on a GPU
    (its RNN backward refuses eval mode), train-mode BatchNorms in eval when asked, dense
    embedding gradients, parametrizations uncached, torch's vmap performance notes
    silenced, the model's state guarded (:class:`StateGuard`)."""
    if guard is not None:
        guard.restore()
    try:
        with (
            torch.inference_mode(False),
            torch.enable_grad(),
            _eager_stance(),
            full_precision(),
            quiet_vmap(),
            cudnn_rnn_guard(model),
            batchnorms_in_eval(model, bn_eval),
            dense_embedding_gradients(model),
            parametrizations_uncached(),
            guard.installed() if guard is not None else contextlib.nullcontext(),
        ):
            yield
    finally:
        if guard is not None:
            guard.restore()


@contextlib.contextmanager
def cudnn_rnn_guard(model: nn.Module) -> Iterator[None]:
    """cuDNN's RNN backward runs only in training mode: for a model on a GPU with recurrent
    layers in eval mode, switch cuDNN off while the block runs (torch's own CUDA kernels
    then compute the same function; every other cuDNN setting is kept)."""
    cudnn = torch.backends.cudnn
    needed = cudnn.enabled and any(
        isinstance(m, nn.RNNBase) and not m.training and any(p.is_cuda for p in m.parameters())
        for m in model.modules()
    )
    if not needed:
        yield
        return
    with cudnn.flags(
        enabled=False,
        benchmark=cudnn.benchmark,
        deterministic=cudnn.deterministic,
        allow_tf32=cudnn.allow_tf32,
    ):
        yield


def usable_model(model: nn.Module) -> nn.Module:
    """The model, or a copy of it when its tensors were made under inference_mode (autograd
    cannot use those; the user's model is never modified)."""
    tensors = [*model.parameters(), *model.buffers()]
    if any(t.is_inference() for t in tensors):
        with torch.inference_mode(False):
            return copy.deepcopy(model)
    return model


def usable_input(x: torch.Tensor | None) -> torch.Tensor | None:
    """A detached, normal tensor for autograd (inputs made under inference_mode are copied)."""
    if isinstance(x, torch.Tensor) and x.is_inference():
        with torch.inference_mode(False):
            return x.clone()
    return x.detach() if isinstance(x, torch.Tensor) else x
