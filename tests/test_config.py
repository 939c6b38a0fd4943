import pytest

from dsd2.config import RunConfig, apply_overrides, config_hash, describe_schema, list_presets, load_config, validate_config
from dsd2.errors import UserError


def test_defaults_reproduce_the_paper_protocol():
    cfg = RunConfig()
    assert (cfg.train.lr, cfg.train.momentum, cfg.train.weight_decay, cfg.train.batch_size, cfg.train.epochs) == (0.1, 0.9, 1e-4, 128, 160)
    assert [round(m * cfg.train.epochs) for m in cfg.train.milestones] == [80, 120]
    assert (cfg.prune.rate, cfg.prune.rounds, cfg.prune.retrain, cfg.prune.method) == (0.2, 34, "lr_rewind", "global_magnitude")
    assert (cfg.distill.alpha, cfg.distill.temperature) == (0.8, 10.0)


def test_overrides_parse_yaml_values_and_nest():
    data = apply_overrides({"prune": {"rounds": 3}}, ["prune.rounds=10", "noise.rate=0.2", "model.hidden=[8, 8]", "seed=3"])
    assert data == {"prune": {"rounds": 10}, "noise": {"rate": 0.2}, "model": {"hidden": [8, 8]}, "seed": 3}
    cfg = validate_config(data)
    assert cfg.model.options == {"hidden": [8, 8]}


@pytest.mark.parametrize(
    "override, needle",
    [
        ("noise.rate=1.0", "noise.rate"),
        ("noise.rate=-0.1", "noise.rate"),
        ("noise.rate=.nan", "nan"),
        ("noise.kind=gaussian", "noise.kind"),
        ("prune.rate=0", "prune.rate"),
        ("prune.rate=1", "prune.rate"),
        ("prune.rounds=-1", "prune.rounds"),
        ("prune.retrain=magic", "prune.retrain"),
        ("train.epochs=0", "train.epochs"),
        ("train.lr=abc", "train.lr"),
        ("train.milestones=[0.8,0.5]", "milestones"),
        ("trian.epochs=3", "unknown key"),
        ("train.epoch=3", "unknown key"),
        ("seed=-2", "seed"),
        ("name=a/b", "name"),
        ("distill.alpha=1.5", "distill.alpha"),
    ],
)
def test_bad_values_are_clear_user_errors(override, needle):
    with pytest.raises(UserError, match="invalid configuration") as err:
        load_config(None, [override])
    assert needle in str(err.value)


def test_a_huge_or_many_times_wrong_config_gives_a_short_error():
    """Unknown keys and bad values are named cut short, and only the first 20 problems listed:
    a hostile config must not make a huge error."""
    with pytest.raises(UserError, match="unknown key") as err:
        load_config(None, ["k" * 5000 + "=1"])
    assert len(str(err.value)) < 400
    with pytest.raises(UserError, match="and 10 more") as err:
        load_config(None, [f"key{i}=1" for i in range(30)])
    assert str(err.value).count("unknown key") == 20


def test_malformed_override_and_missing_file():
    with pytest.raises(UserError, match="key.sub=value"):
        load_config(None, ["prune.rounds"])
    with pytest.raises(UserError, match="not found"):
        load_config("/nonexistent/config.yaml")


def test_bad_yaml_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(p)
    p.write_text("- a list\n")
    with pytest.raises(UserError, match="mapping"):
        load_config(p)


def test_hash_ignores_device_and_name_but_not_results():
    a = load_config(None, ["name=a"])
    b = load_config(None, ["name=b", "train.device=cpu", "train.threads=2"])
    c = load_config(None, ["seed=1"])
    assert config_hash(a) == config_hash(b)
    assert config_hash(a) != config_hash(c)
    assert a.run_id().startswith("a-")


def test_presets_validate():
    names = list_presets()
    assert "demo_fmnist" in names and "cifar10_vgg_noise50" in names
    for name in names:
        cfg = load_config(name)
        assert cfg.name == name


def test_schema_lists_required_keys():
    keys = {k for k, _, _ in describe_schema()}
    for required in (
        "seed",
        "dataset.name",
        "dataset.root",
        "noise.kind",
        "noise.rate",
        "model.name",
        "train.epochs",
        "prune.rounds",
        "prune.rate",
        "prune.retrain",
    ):
        assert required in keys


def test_hash_covers_only_non_default_values():
    """A field added later with its default value must not change existing run ids."""
    a = load_config(None, ["prune.rounds=3"])
    b = load_config(None, ["prune.rounds=3", "early_stop.select=best", "train.lr=0.1"])  # explicit defaults
    assert config_hash(a) == config_hash(b)
    assert config_hash(a) != config_hash(load_config(None, ["prune.rounds=3", "model.depth=3"]))


def test_rounds_leave_the_run_id_but_not_the_digest():
    """More rounds extend the same curve (same run id); the digest still tells the configs apart."""
    a, b = load_config(None, ["prune.rounds=3"]), load_config(None, ["prune.rounds=4"])
    assert a.run_id() == b.run_id()
    assert a.digest() != b.digest()


# Run ids name run directories: a change to the hash would orphan every existing run.
# (preset, overrides, run id, the third scheme's id that hashed unused options, the second
# scheme's id that counted prune.rounds). demo_fmnist sets distill.alpha, which its plain run
# never reads: the fourth scheme left it out, the third scheme's id still finds the old folders.
PINNED_RUN_IDS = [
    ("tiny_mnist1d", [], "tiny_mnist1d-7248436e8d", "tiny_mnist1d-7248436e8d", "tiny_mnist1d-021559a66d"),
    ("demo_fmnist", [], "demo_fmnist-9d3a04e89f", "demo_fmnist-1bf78e5bd4", "demo_fmnist-24589fb56a"),
    ("cifar10_vgg_noise50", [], "cifar10_vgg_noise50-7de4b089a6", "cifar10_vgg_noise50-7de4b089a6", "cifar10_vgg_noise50-7de4b089a6"),
    ("demo_fmnist", ["seed=1", "train.epochs=6"], "demo_fmnist-defb91a478", "demo_fmnist-ac0606f6ee", "demo_fmnist-ff9d9c8d2d"),
    (None, [], "run-44136fa355", "run-44136fa355", "run-44136fa355"),
]


@pytest.mark.parametrize("preset, overrides, run_id, third, with_rounds", PINNED_RUN_IDS)
def test_pinned_run_ids(preset, overrides, run_id, third, with_rounds):
    cfg = load_config(preset, overrides)
    assert cfg.run_id() == run_id
    ids = [cfg.run_id(), *cfg.legacy_run_ids()]
    assert third in ids and with_rounds in ids
    assert len(ids) == len(set(ids))


def test_data_location_and_devices_leave_the_run_id():
    base = load_config("cifar10_vgg_noise50").run_id()
    for o in ("dataset.root=/elsewhere/cifar", "dataset.download=true", "train.device=cpu", "train.threads=3"):
        assert load_config("cifar10_vgg_noise50", [o]).run_id() == base, o
    # the first run ids hashed the data folder: such run directories still resolve through legacy_run_ids
    moved = load_config("cifar10_vgg_noise50", ["dataset.root=/data/cifar"])
    assert moved.legacy_run_ids()[-1] == "cifar10_vgg_noise50-ce5e6bf4d9"
    assert load_config("cifar10_vgg_noise50").legacy_run_ids() == []  # every scheme gave it the same id
    assert load_config("tiny_mnist1d").legacy_run_ids()[-1] == "tiny_mnist1d-bd1a7efe44"  # its preset sets root: null


def test_a_run_directory_named_by_the_old_hash_still_resumes(tmp_path):
    from dsd2.rundir import run_dir_for

    cfg = load_config("tiny_mnist1d")
    assert run_dir_for(cfg, tmp_path) == tmp_path / cfg.run_id()
    for old in reversed(cfg.legacy_run_ids()):  # the newer scheme wins when both exist
        (tmp_path / old).mkdir()
        assert run_dir_for(cfg, tmp_path) == tmp_path / old
    (tmp_path / cfg.run_id()).mkdir()
    assert run_dir_for(cfg, tmp_path) == tmp_path / cfg.run_id()


def test_yaml_alias_bomb_is_refused_before_it_expands(tmp_path):
    """10 aliases nested 9 deep: a billion values once expanded; refused while still small."""
    import tracemalloc

    import yaml

    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for i in range(1, 9):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    lines.append("train: {epochs: *a8}")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    tracemalloc.start()
    with pytest.raises(UserError, match="YAML aliases"):
        load_config(bomb)
    with pytest.raises(UserError, match="YAML aliases"):
        validate_config(yaml.safe_load(bomb.read_text()), "config.yaml")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 50 * 2**20  # nothing was expanded


def test_seed_beyond_the_generators_range_is_a_config_error():
    with pytest.raises(UserError, match="seed"):
        load_config(None, ["seed=99999999999999999999999"])


@pytest.mark.parametrize(
    "override",
    [
        "train.lr=.inf",
        "train.weight_decay=.inf",
        "dataset.mean=[.nan]",
        "dataset.std=[.inf]",
        "distill.temperature=.inf",
        "noise.rate=.nan",
    ],
)
def test_non_finite_values_are_refused(override):
    pair = ["dataset.std=[1.0]"] if "mean" in override else ["dataset.mean=[0.0]"] if "std" in override else []
    with pytest.raises(UserError, match="finite number"):
        load_config(None, [override, *pair])


def test_a_key_given_twice_is_refused(tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_text("train:\n  lr: 0.1\n  epochs: 3\n  lr: 0.5\n")
    with pytest.raises(UserError, match="key 'lr' is given twice"):
        load_config(path)


@pytest.mark.parametrize("threads", [0, -1, 100000])
def test_thread_counts_outside_1_to_1024_are_one_line_refusals(threads):
    """100000 threads crashed the process inside OpenMP (segfault, nothing said); an existing
    run's override goes through the same check (rundir.with_overrides validates)."""
    from dsd2.config import MAX_THREADS

    with pytest.raises(UserError) as err:
        load_config("tiny_mnist1d", [f"train.threads={threads}"])
    lines = [ln for ln in str(err.value).splitlines() if ln.strip().startswith("train.threads")]
    assert len(lines) == 1 and f"not between 1 and {MAX_THREADS}" in lines[0]
    assert load_config("tiny_mnist1d", [f"train.threads={MAX_THREADS}"]).train.threads == MAX_THREADS


@pytest.mark.parametrize("workers", [-1, 100000])
def test_worker_counts_outside_0_to_256_are_one_line_refusals(workers):
    from dsd2.config import MAX_WORKERS

    with pytest.raises(UserError) as err:
        load_config(None, ["dataset.name=image_folder", "dataset.root=/nowhere", f"dataset.workers={workers}"])
    lines = [ln for ln in str(err.value).splitlines() if ln.strip().startswith("dataset.workers")]
    assert len(lines) == 1 and f"not between 0 and {MAX_WORKERS}" in lines[0]


def test_a_run_directory_given_as_a_config_names_its_config_yaml(tmp_path):
    """`dsd2 pipeline RUN_DIR` said "config file RUN_DIR not found" about a folder that exists."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("name: x\n")
    with pytest.raises(UserError, match="is a run directory, not a config file: give .*config.yaml"):
        load_config(str(run_dir))
