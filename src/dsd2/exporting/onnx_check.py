"""model.onnx: exported with torch's dynamo exporter and checked against PyTorch with onnxruntime."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dsd2.errors import UserError

# ONNX vs PyTorch on random inputs: max |difference| allowed, relative to the largest |logit| (at least 1).
ONNX_TOLERANCE = 1e-4
_ONNX_EXTRA = "the ONNX check needs onnx, onnxscript and onnxruntime: pip install 'dsd2[export]'"


def check_onnx_available() -> None:
    for mod in ("onnx", "onnxscript", "onnxruntime"):
        if importlib.util.find_spec(mod) is None:
            raise UserError(f"--onnx: {mod} is not installed; {_ONNX_EXTRA}")


def write_onnx(model: nn.Module, path: Path, input_shape: list[int], *, batch: int = 4, seed: int = 0) -> float:
    """Export ``model`` (eval mode) to ``path`` with a dynamic batch axis; return the max abs
    difference of onnxruntime's logits from PyTorch's on seeded random inputs. Above
    :data:`ONNX_TOLERANCE` (relative to the largest logit, at least 1) it is an error."""
    import onnxruntime

    check_onnx_available()
    example = torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(seed))
    params = sum(p.numel() * p.element_size() for p in model.state_dict().values())
    try:
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=["input"],
            output_names=["logits"],
            dynamic_shapes=({0: "batch"},),
            dynamo=True,
            external_data=params > 1_800_000_000,  # one self-contained file under protobuf's 2 GB limit
            verbose=False,
        )
    except Exception as err:  # the exporter's own errors are many types; say which model failed and why
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"torch.onnx.export failed on this model: {first[:500]}") from None
    x = torch.randn(batch, *input_shape, generator=torch.Generator().manual_seed(seed + 1))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        want = model(x).numpy()
    diff = float(np.abs(got - want).max())
    allowed = ONNX_TOLERANCE * max(1.0, float(np.abs(want).max()))
    if not diff <= allowed:
        raise UserError(f"the ONNX model differs from PyTorch by {diff:.3g} on random inputs (allowed {allowed:.3g}): not written")
    return diff
