"""What every config section shares: the base model (unknown keys refused, no inf or NaN) and the
bounds on sizes no machine holds. Must not import torch."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

# Bounds on sizes no machine dsd2 runs on can hold (reader-side guards, issue 23): a value past
# one is a typo or hostile, refused with the key's name before anything is allocated.
MAX_IMAGE_SIDE = 4096
MAX_BATCH = 1 << 16
MAX_THREADS = 1024  # train.threads: more than any CPU has, far below what the OpenMP runtime survives
MAX_WORKERS = 256  # dataset.workers: each is a process holding its own copy of the decoder state
MAX_MODEL_NUMBER = 10_000_000  # any numeric model option (a width, depth, patch size...)


def plugin_options_text(kind: str, plural: str) -> str:
    return (
        f"A plugin {kind}'s own options, validated against the options model it was registered with (docs/plugins.md); "
        f"built-in {plural} take none. Values equal to its defaults are dropped (they are the same run)."
    )


class Section(BaseModel):
    # Unknown keys are typos; inf and NaN are never a valid rate, lr, temperature or statistic.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)
