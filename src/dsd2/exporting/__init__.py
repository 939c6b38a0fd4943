"""Export one finished round of a run as a deployable model folder, and load it back.

``export_run`` writes, into a folder built in a hidden staging folder first (:mod:`dsd2.outdir`:
a new ``-o`` is renamed into place whole; into an existing one ``force`` moves the files over an
intact earlier export's and touches nothing else there):

- ``model.safetensors``: the round's state dict with the masks folded in (pruned entries are
  exact zeros). Its keys are the model's own, so a torchvision-built model's file loads into the
  plain torchvision constructor with ``strict=True``. With ``compressed=True`` every masked
  tensor is stored as its kept values (1-D) plus a packed bitmask or their indices instead
  (docs/export.md).
- ``model.json``: what rebuilding and using the model needs (architecture and options, plugins,
  classes, input shape, normalisation) and where it came from (run, round, how it was selected,
  its accuracies and sparsity, the round's manifest hashes), plus the sha256 of every file.
- ``model.onnx`` (``onnx=True``): exported with torch's default (dynamo) exporter, checked
  against PyTorch on random inputs with onnxruntime.

Reading an export back (:func:`load_exported`) checks everything in it first
(:mod:`dsd2.export_format`): it is a file people download from others.

Which round: ``best`` (highest accuracy on the selection column, validation, or test without a
validation split: :func:`dsd2.compare.best_round`), ``last_good`` (the sparsest round before the
drop that stops pruning: :func:`dsd2.compare.decide` with ``select="last_good"``, the run's own
early-stop rule, else the plain rule with the config defaults) or a round index.
"""

from .info import import_plugins
from .load import load_exported, load_state, read_info
from .onnx_check import ONNX_TOLERANCE, write_onnx
from .select import select_round
from .tensors import compress, decompress, fold_masks
from .write import ExportResult, export_run

__all__ = [
    "ONNX_TOLERANCE",
    "ExportResult",
    "compress",
    "decompress",
    "export_run",
    "fold_masks",
    "import_plugins",
    "load_exported",
    "load_state",
    "read_info",
    "select_round",
    "write_onnx",
]
