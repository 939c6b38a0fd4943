"""Any torchvision classifier (``torchvision/<name>``) and any timm model (``timm/<name>``) by name.

Two families of :data:`dsd2.models.registry.MODELS` (see :meth:`dsd2.registry.Registry.register_family`):
``model.name: torchvision/resnet50`` builds ``torchvision.models.resnet50(weights=None, ...)`` and
``model.name: timm/convnext_atto`` builds ``timm.create_model("convnext_atto", pretrained=False, ...)``
(timm is the optional extra ``pip install 'dsd2[timm]'``). docs/models.md is the user's guide.

What dsd2 sets, what the user may set:

* ``num_classes`` comes from the data; so does the input size of models that are built for one
  (``image_size`` of torchvision's ViTs, ``input_size`` of MaxViT, ``img_size`` of timm's
  transformers) and timm's ``in_chans``.
* Every other named constructor argument with a default is a model option
  (``model.zero_init_residual=true``), validated and converted from command-line strings like
  the built-in models' options (pydantic, from the constructor's annotations). An option not
  given is not passed, so the builder's own default applies (``dsd2 models torchvision/NAME``
  shows the constructor's defaults; a builder such as ``convnext_tiny`` may choose another).
* Random initialisation only: ``weights`` (torchvision) / ``pretrained`` (timm) other than
  None / false is refused (no download, no cache).
* ``aux_logits`` defaults to false (GoogLeNet, Inception-v3): dsd2 trains on one logits tensor;
  ``aux_logits=true`` is refused. GoogLeNet's and Inception-v3's ``init_weights=None`` is passed
  as True (what torchvision does for None, without its FutureWarning).

The builder returns the library's module itself, unwrapped, so a 3-channel model's state dict
loads into the plain constructor (``torchvision.models.resnet18(num_classes=K)``) with
``strict=True``. Data with other than 3 channels: timm models get ``in_chans``; a torchvision
model's first 3-channel convolution is replaced by one with the data's channels (same
hyper-parameters; its weights are the constructor's random weights of input channels
``0..C-1``, and for ``C > 3`` the extra channels are drawn from the constructor's weights of that
conv), so such a model's stem differs from torchvision's.

After construction a copy of the model on the meta device (no data, no compute) runs once on a
batch of two inputs of the data's shape, in training and evaluation mode: an architecture that cannot
take the data's image size (inception_v3 needs at least 75 px, alexnet on 28 px, ...) or does not
return one ``(N, num_classes)`` tensor fails at build time with a :class:`~dsd2.errors.UserError`.
"""

from __future__ import annotations

import copy
import functools
import inspect
import typing
from collections.abc import Callable, Mapping
from typing import Any

import torch
from pydantic import ConfigDict, TypeAdapter
from torch import Tensor, nn

from dsd2.errors import UserError
from dsd2.models.registry import MODELS, STANDARD_ARGS, Builder, cli_type, hint_from_default

__all__ = ["TIMM", "TORCHVISION", "adapt_input_channels", "check_forward", "timm_names", "torchvision_names"]

TORCHVISION = "torchvision"
TIMM = "timm"

# Constructor arguments dsd2 sets from the data, per family; never model options.
_TORCHVISION_FROM_DATA = frozenset({"num_classes", "image_size", "input_size"})
_TIMM_FROM_DATA = frozenset({"num_classes", "in_chans", "img_size"})
# Where the model lives is dsd2's business (timm's constructors take device and dtype); `name` is
# model.name's.
_NOT_OPTIONS = frozenset({"device", "dtype", "name"})


def _fail(label: str, message: str) -> UserError:
    return UserError(f"model {label!r}: {message}")


# ----------------------------------------------------------------------------- constructor options


def _constructor_params(cls: Any) -> tuple[dict[str, inspect.Parameter], dict[str, Any]]:
    """Every named parameter of ``cls.__init__`` and their type hints, following ``**kwargs`` to
    the base classes (timm's distilled ViT takes ``*args, **kwargs`` and passes them on)."""
    params: dict[str, inspect.Parameter] = {}
    hints: dict[str, Any] = {}
    if not isinstance(cls, type):
        return params, hints
    for klass in cls.__mro__:
        if klass in (nn.Module, object):
            break
        init = vars(klass).get("__init__")
        if init is None:
            continue
        try:
            sig = inspect.signature(init)
        except (TypeError, ValueError):
            break
        try:
            klass_hints = typing.get_type_hints(init)
        except Exception:  # an annotation that does not resolve: the default's type is used
            klass_hints = {}
        for p in list(sig.parameters.values())[1:]:
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name in params:
                continue
            params[p.name] = p
            if p.name in klass_hints:
                hints[p.name] = klass_hints[p.name]
        if not any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values()):
            break
    return params, hints


def _dsd2_defaults(params: Mapping[str, inspect.Parameter]) -> dict[str, Any]:
    """Constructor arguments whose default dsd2 changes (see the module docstring)."""
    out: dict[str, Any] = {}
    if "aux_logits" in params:
        out["aux_logits"] = False
    if "init_weights" in params and params["init_weights"].default is None:
        out["init_weights"] = True
    return out


_ADAPTER_CONFIG = ConfigDict(arbitrary_types_allowed=True)


def _usable_hint(hint: Any) -> Any:
    """``hint`` if pydantic can validate values of it, else ``Any`` (the value is passed as given)."""
    try:
        TypeAdapter(cli_type(hint), config=_ADAPTER_CONFIG)
    except Exception:
        return Any
    return hint


def _make_builder(
    label: str,
    cls: Any,
    params: Mapping[str, inspect.Parameter],
    hints: Mapping[str, Any],
    first: list[tuple[str, Any, Any]],
    from_data: frozenset[str],
    construct: Callable[[int, int, int, dict[str, Any]], nn.Module],
) -> Builder:
    """A builder ``(num_classes, in_channels, input_size, **options)`` whose signature lists the
    options (``first``: (name, type, default) before the constructor's), so the registry
    validates and converts them as it does for the built-in models."""
    options: list[inspect.Parameter] = []
    annotations: dict[str, Any] = {a: int for a in STANDARD_ARGS}
    for name, hint, default in first:
        options.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default))
        annotations[name] = hint
    changed = _dsd2_defaults(params)
    for p in params.values():
        if p.default is p.empty or p.name in _NOT_OPTIONS | from_data or p.name in STANDARD_ARGS or p.name in annotations:
            continue
        options.append(inspect.Parameter(p.name, inspect.Parameter.KEYWORD_ONLY, default=changed.get(p.name, p.default)))
        annotations[p.name] = _usable_hint(hints.get(p.name, hint_from_default(p.default)))

    def builder(num_classes: int, in_channels: int, input_size: int, **opts: Any) -> nn.Module:
        return construct(num_classes, in_channels, input_size, dict(opts))

    standard = [inspect.Parameter(a, inspect.Parameter.POSITIONAL_OR_KEYWORD) for a in STANDARD_ARGS]
    setattr(builder, "__signature__", inspect.Signature(standard + options))  # noqa: B010  read by inspect.signature
    builder.__annotations__ = {**annotations, "return": nn.Module}
    builder.__name__ = builder.__qualname__ = label
    where = f"{cls.__module__}.{cls.__qualname__}" if isinstance(cls, type) else "its constructor"
    builder.__doc__ = f"{label}: {where}, random init; options are its constructor's arguments."
    return builder


def _construct(label: str, make: Callable[[], nn.Module], options: Mapping[str, Any], shape: tuple[int, int]) -> nn.Module:
    """``make()``; errors the options cause become UserErrors. A constructor that computes with
    tensors (torchvision's RegNet) cannot run on the meta device (the sweep's cost estimate builds
    models there): it is built on the CPU and moved."""
    try:
        return make()
    except NotImplementedError as err:
        if "meta" not in str(err) or torch.get_default_device().type != "meta":
            raise
        with torch.device("cpu"):
            return make().to("meta")
    except (TypeError, ValueError, AssertionError, KeyError, RuntimeError) as err:
        if isinstance(err, RuntimeError) and "memory" in str(err).lower():
            raise
        given = f" with options {dict(options)}" if options else ""
        channels, size = shape
        raise _fail(label, f"cannot be built for the data's {channels}×{size}×{size} inputs{given}: {type(err).__name__}: {err}") from None


def _library_kwargs(
    label: str, params: Mapping[str, inspect.Parameter], options: dict[str, Any], pretrained_key: str, unset: Any
) -> dict[str, Any]:
    """A library constructor's keyword arguments: dsd2's defaults under the user's options, once
    pretrained weights and auxiliary heads (one logits tensor is trained) are refused."""
    _refuse_pretrained(label, pretrained_key, options.pop(pretrained_key, unset))
    if options.get("aux_logits"):
        raise _fail(label, "aux_logits=true is not supported: dsd2 trains on one logits tensor (leave aux_logits unset)")
    return {**_dsd2_defaults(params), **options}


def _refuse_pretrained(label: str, option: str, value: Any) -> None:
    if value in (None, False):
        return
    raise _fail(
        label,
        f"{option}={value!r}: dsd2 builds models with random initialisation only; pretrained weights are not loaded "
        "(they need the library's download cache or the network, and an IMP curve starts from a random init). "
        f"Leave {option} unset; to prune a pretrained network, build it in Python and load its state dict.",
    )


def adapt_input_channels(model: nn.Module, in_channels: int, label: str = "model") -> nn.Module:
    """Replace the first 3-channel ``nn.Conv2d`` (module order) by one taking ``in_channels``.

    Same hyper-parameters; the weights of input channels ``0..min(C, 3)-1`` are the old conv's,
    those of further channels are drawn (with the global RNG) from the old conv's weights; the bias
    is kept. Returns ``model``, changed in place.
    """
    found = next(
        ((name, m) for name, m in model.named_modules() if type(m) is nn.Conv2d and m.in_channels == 3 and m.groups == 1),
        None,
    )
    if found is None:
        raise _fail(label, f"takes 3-channel images and has no plain 3-channel input convolution for the data's {in_channels} channel(s)")
    qualified, conv = found
    assert isinstance(conv, nn.Conv2d)
    new = nn.Conv2d(
        in_channels,
        conv.out_channels,
        conv.kernel_size,  # type: ignore[arg-type]
        stride=conv.stride,  # type: ignore[arg-type]
        padding=conv.padding,  # type: ignore[arg-type]
        dilation=conv.dilation,  # type: ignore[arg-type]
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    with torch.no_grad():
        keep = min(in_channels, 3)
        new.weight[:, :keep].copy_(conv.weight[:, :keep])
        if in_channels > 3:
            pool = conv.weight.flatten()
            extra = new.weight[:, 3:]
            idx = torch.randint(pool.numel(), (extra.numel(),)).to(pool.device)
            extra.copy_(pool[idx].view_as(extra))
        if conv.bias is not None and new.bias is not None:
            new.bias.copy_(conv.bias)
    parent_name, _, attr = qualified.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, new)
    return model


def _meta_limitation(err: BaseException) -> bool:
    """An error of running on the meta device, not of the model (the check is skipped then)."""
    return isinstance(err, NotImplementedError) or "meta" in str(err).lower()


def _describe(out: Any) -> str:
    if isinstance(out, Tensor):
        return f"a tensor of shape {tuple(out.shape)}"
    return f"a {type(out).__name__}"


def _meta_copy(model: nn.Module) -> nn.Module | None:
    """A deep copy of ``model`` whose parameters and buffers are meta tensors (no data copied),
    or None when the model cannot be copied."""
    memo: dict[int, Any] = {}
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
    for b in model.buffers():
        memo[id(b)] = torch.empty_like(b, device="meta")
    try:
        return copy.deepcopy(model, memo)
    except Exception:
        return None


def check_forward(model: nn.Module, label: str, num_classes: int, in_channels: int, input_size: int) -> None:
    """Run ``model`` on a meta batch of two ``in_channels × input_size × input_size`` inputs in
    training and evaluation mode; UserError unless each returns one ``(2, num_classes)`` tensor.

    The check runs on a copy whose parameters and buffers are meta tensors (nothing is computed
    or allocated, and whatever the forward caches stays in the copy). A failure that comes from the
    meta device itself (an op without a meta kernel, a tensor kept outside the parameters) skips
    the check.
    """
    probe = _meta_copy(model)
    if probe is None:
        return
    x = torch.empty((2, in_channels, input_size, input_size), device="meta")
    for training in (True, False):
        probe.train(training)
        mode = "training" if training else "evaluation"
        try:
            with torch.no_grad():
                out = probe(x)
        except Exception as err:
            if _meta_limitation(err):
                return
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise _fail(
                label,
                f"does not run on the data's {in_channels}×{input_size}×{input_size} inputs ({mode} mode): "
                f"{type(err).__name__}: {first[:300]}. The architecture may need larger images (ImageNet models are "
                "designed for 224×224; e.g. inception_v3 needs at least 75 px) or other options.",
            ) from None
        if not isinstance(out, Tensor) or tuple(out.shape) != (2, num_classes):
            raise _fail(
                label,
                f"returns {_describe(out)} in {mode} mode on a batch of 2, not one (2, {num_classes}) tensor of class "
                "scores, which dsd2's training and evaluation need (check options such as aux_logits or num_classes).",
            )


# ----------------------------------------------------------------------------- torchvision


@functools.cache
def torchvision_names() -> tuple[str, ...]:
    """torchvision's classification models (``torchvision.models.list_models(module=torchvision.models)``)."""
    from torchvision import models as tvm

    return tuple(tvm.list_models(module=tvm))


def _return_class(fn: Callable[..., Any]) -> Any:
    ret = inspect.signature(fn).return_annotation
    if isinstance(ret, str):
        try:
            ret = typing.get_type_hints(fn).get("return", ret)
        except Exception:
            return None
    return ret if isinstance(ret, type) else None


def _resolve_torchvision(name: str) -> tuple[Builder, dict[str, Any]]:
    if name not in torchvision_names():
        raise LookupError(name)
    from torchvision import models as tvm

    fn = tvm.get_model_builder(name)
    cls = _return_class(fn)
    params, hints = _constructor_params(cls)
    label = f"{TORCHVISION}/{name}"

    def construct(num_classes: int, in_channels: int, input_size: int, options: dict[str, Any]) -> nn.Module:
        kwargs = _library_kwargs(label, params, options, "weights", None)
        if "image_size" in params:  # torchvision's ViTs
            kwargs["image_size"] = input_size
        if "input_size" in params:  # MaxViT
            kwargs["input_size"] = (input_size, input_size)
        model = _construct(label, lambda: fn(weights=None, num_classes=num_classes, **kwargs), options, (in_channels, input_size))
        if in_channels != 3:
            adapt_input_channels(model, in_channels, label)
        check_forward(model, label, num_classes, in_channels, input_size)
        return model

    builder = _make_builder(label, cls, params, hints, [("weights", str | None, None)], _TORCHVISION_FROM_DATA, construct)
    metadata = {"input_shape": (3, 224, 224), "family": TORCHVISION, "constructor": f"torchvision.models.{name}"}
    return builder, metadata


MODELS.register_family(
    TORCHVISION,
    resolve=_resolve_torchvision,
    names=lambda: list(torchvision_names()),
    description="any torchvision classifier (random init)",
    listing="`dsd2 models torchvision` lists them.",
)


# ----------------------------------------------------------------------------- timm


def _timm() -> Any:
    try:
        import timm
    except ImportError:
        raise UserError("timm/<name> models need timm, an optional extra: pip install 'dsd2[timm]' (or pip install timm)") from None
    return timm


def timm_names() -> list[str]:
    """timm's model names (``timm.list_models()``); UserError when timm is not installed."""
    return list(_timm().list_models())


def _resolve_timm(name: str) -> tuple[Builder, dict[str, Any]]:
    timm = _timm()
    if not name or not timm.is_model(name):
        raise LookupError(name)
    from timm.models import get_pretrained_cfg_value, model_entrypoint

    cls = _return_class(model_entrypoint(name))
    params, hints = _constructor_params(cls)
    label = f"{TIMM}/{name}"

    def construct(num_classes: int, in_channels: int, input_size: int, options: dict[str, Any]) -> nn.Module:
        kwargs = _library_kwargs(label, params, options, "pretrained", False)
        if "img_size" in params:  # transformers built for one image size
            kwargs["img_size"] = input_size
        if "in_chans" in params:
            kwargs["in_chans"] = in_channels
        model = _construct(
            label, lambda: timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs), options, (in_channels, input_size)
        )
        if in_channels != 3 and "in_chans" not in params:
            adapt_input_channels(model, in_channels, label)
        check_forward(model, label, num_classes, in_channels, input_size)
        return model

    builder = _make_builder(label, cls, params, hints, [("pretrained", bool, False)], _TIMM_FROM_DATA, construct)
    metadata: dict[str, Any] = {"family": TIMM, "constructor": f"timm.create_model({name!r})"}
    try:
        shape = get_pretrained_cfg_value(name, "input_size")
    except Exception:
        shape = None
    if shape:
        metadata["input_shape"] = tuple(shape)
    return builder, metadata


MODELS.register_family(
    TIMM,
    resolve=_resolve_timm,
    names=timm_names,
    description="any timm model (random init; needs pip install 'dsd2[timm]')",
    listing="`dsd2 models timm` lists them.",
)
