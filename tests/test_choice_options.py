"""Each registered choice owns its options (dsd2.registry, "reads" and "options"): the run id counts
an option only when the run's choices read it, a plugin's choice declares what it reads, and a
plugin noise kind with an options model gets the validated ``noise.options`` of the config."""

from __future__ import annotations

import pytest

from dsd2.config import unused_options
from dsd2.registry import NOISE_MODELS, OPTIMIZERS, PRUNING_CRITERIA, RETRAIN_MODES, STOP_RULES

from conftest import tiny_config


def _plugin(*args, **kwargs):
    raise AssertionError("not called: only the config is built")


@pytest.mark.parametrize(
    "registry, name, reads",
    [
        (NOISE_MODELS, "asymmetric", {"noise.rate", "noise.class_map"}),
        (NOISE_MODELS, "transition", set()),
        (RETRAIN_MODES, "late_rewind", {"prune.rewind_epoch"}),
        (PRUNING_CRITERIA, "snip", {"prune.score_batches", "prune.score_batchnorm"}),
        (OPTIMIZERS, "adam", set()),
        (STOP_RULES, "plain", {"early_stop.tolerance", "early_stop.patience", "early_stop.select"}),
    ],
)
def test_built_in_choices_declare_the_options_they_read(registry, name, reads):
    assert registry.reads(name) == reads
    assert reads <= set(registry.owns)


def test_a_plugin_choice_that_declares_what_it_reads_keeps_only_that_in_the_run_id():
    with NOISE_MODELS.snapshot(), OPTIMIZERS.snapshot():
        NOISE_MODELS.register("plug_std_noise", _plugin, metadata={"reads": ("noise.instance_std",)})
        OPTIMIZERS.register("plug_opt", _plugin)  # declares nothing: it may read any option of its registry
        unused = unused_options(tiny_config("noise.kind=plug_std_noise", "train.optimizer=plug_opt"))
        assert {("noise", "rate"), ("noise", "class_map")} <= set(unused)
        assert ("noise", "instance_std") not in unused
        assert ("train", "momentum") not in unused
        base = tiny_config("noise.kind=plug_std_noise")
        assert tiny_config("noise.kind=plug_std_noise", "noise.rate=0.1").run_id() == base.run_id()
        assert tiny_config("noise.kind=plug_std_noise", "noise.instance_std=0.3").run_id() != base.run_id()


@pytest.mark.parametrize(
    "metadata, message",
    [
        ({"reads": ("prune.rewind_epoch",)}, "not options of noise kinds"),
        ({"reads": "noise.rate"}, "must be a tuple"),
        ({"options": dict}, "must be a pydantic model class"),
    ],
)
def test_a_wrong_declaration_fails_at_registration(metadata, message):
    with NOISE_MODELS.snapshot(), pytest.raises(TypeError, match=message):
        NOISE_MODELS.register("plug_bad", _plugin, metadata=metadata)
