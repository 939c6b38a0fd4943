"""Run configuration: a validated pydantic schema, YAML presets, ``key.sub=value`` overrides, run ids.

One module per job, every public name re-exported here (``from dsd2.config import load_config``):

- :mod:`~dsd2.config.schema`: the section models and :class:`RunConfig` (every field documented once),
  the data sections in :mod:`~dsd2.config.data_sections`, their shared base in :mod:`~dsd2.config.section`;
- :mod:`~dsd2.config.choices`: each registered choice's own options, validated, and the one accessor
  :func:`options_of`;
- :mod:`~dsd2.config.load`: a config from a YAML file or preset, with overrides, validated;
- :mod:`~dsd2.config.identity`: what the run id hashes, the hash, the ids of earlier schemes;
- :mod:`~dsd2.config.safe_yaml` and :mod:`~dsd2.config.matrix`: a user's YAML and noise matrix read safely.

Nothing here imports torch: configs are validated before anything heavy is loaded.
"""

from dsd2.config.choices import (
    check_choice_options,
    choice_keyword,
    choice_options,
    chosen,
    filled_options,
    options_keyword,
    options_of,
)
from dsd2.config.data_sections import DatasetConfig, NoiseConfig, NoiseKindName
from dsd2.config.identity import (
    EXECUTION_FIELDS,
    GRADUAL_WINDOW,
    ID_VERSION,
    config_hash,
    default_gradual_window,
    differing_settings,
    execution_changes,
    identity_settings,
    unused_options,
    with_execution,
)
from dsd2.config.load import PRESET_DIR, apply_overrides, list_presets, load_config, read_yaml, validate_config
from dsd2.config.matrix import MATRIX_ROW_TOL, MAX_MATRIX_CLASSES, MAX_MATRIX_YAML_BYTES, check_transition_rows, read_matrix_file
from dsd2.config.safe_yaml import MAX_CONFIG_NODES, check_size, load_yaml_text
from dsd2.config.schema import (
    SELF_TEACHER,
    AllocationName,
    DistillConfig,
    EarlyStopConfig,
    EntropyConfig,
    FeatureHintConfig,
    ModelConfig,
    OptimizerName,
    PruneConfig,
    PruningCriterionName,
    PruningMethodName,
    PruningScheduleName,
    RetrainModeName,
    RunConfig,
    ScheduleName,
    StopRuleName,
    TeacherSpec,
    TrainConfig,
    describe_schema,
)
from dsd2.config.section import MAX_BATCH, MAX_IMAGE_SIDE, MAX_MODEL_NUMBER, MAX_THREADS, MAX_WORKERS

__all__ = [
    "EXECUTION_FIELDS",
    "GRADUAL_WINDOW",
    "ID_VERSION",
    "MATRIX_ROW_TOL",
    "MAX_BATCH",
    "MAX_CONFIG_NODES",
    "MAX_IMAGE_SIDE",
    "MAX_MATRIX_CLASSES",
    "MAX_MATRIX_YAML_BYTES",
    "MAX_MODEL_NUMBER",
    "MAX_THREADS",
    "MAX_WORKERS",
    "PRESET_DIR",
    "SELF_TEACHER",
    "AllocationName",
    "DatasetConfig",
    "DistillConfig",
    "EarlyStopConfig",
    "EntropyConfig",
    "FeatureHintConfig",
    "ModelConfig",
    "NoiseConfig",
    "NoiseKindName",
    "OptimizerName",
    "PruneConfig",
    "PruningCriterionName",
    "PruningMethodName",
    "PruningScheduleName",
    "RetrainModeName",
    "RunConfig",
    "ScheduleName",
    "StopRuleName",
    "TeacherSpec",
    "TrainConfig",
    "apply_overrides",
    "check_choice_options",
    "check_size",
    "check_transition_rows",
    "choice_keyword",
    "choice_options",
    "chosen",
    "config_hash",
    "default_gradual_window",
    "describe_schema",
    "differing_settings",
    "execution_changes",
    "filled_options",
    "identity_settings",
    "list_presets",
    "load_config",
    "load_yaml_text",
    "options_keyword",
    "options_of",
    "read_matrix_file",
    "read_yaml",
    "unused_options",
    "validate_config",
    "with_execution",
]
