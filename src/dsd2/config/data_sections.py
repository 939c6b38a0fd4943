"""The data sections of a run's config: the dataset (``dataset.*``) and the label noise (``noise.*``).
Must not import torch."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, ValidationInfo, field_validator, model_validator

from dsd2 import registry
from dsd2.config.choices import check_choice_options, filled_options
from dsd2.config.matrix import check_transition_rows, read_matrix_file
from dsd2.config.section import MAX_IMAGE_SIDE, MAX_WORKERS, Section
from dsd2.units import check_fraction

NoiseKindName = Annotated[str, AfterValidator(registry.NOISE_MODELS.canonical)]


class DatasetConfig(Section):
    name: str = Field("cifar10", description="Registered dataset: cifar10, cifar100, fashion_mnist, mnist1d, image_folder.")
    root: str | None = Field(
        "./data",
        description="Folder holding the dataset files (or where to download them); image_folder: the folder with train/ and test/.",
    )
    download: bool = Field(False, description="Download (checksum-verified) when the files are missing.")
    val_size: int | None = Field(
        None,
        ge=0,
        description="Validation samples carved from train (None: dataset default, 5000 for CIFAR; 0: the reference, which selects on test).",
    )
    train_subset: int | None = Field(None, gt=0, description="Keep a seeded subset of this many training samples (see split_seed).")
    split_seed: int | None = Field(
        None,
        ge=0,
        description="Seed of the validation split, the training subset and generated data. None: the run seed, so runs with other "
        "seeds also see other data; an integer keeps the data fixed and seeds vary only initialisation, noise draws and batch order.",
    )
    augment: bool = Field(
        True,
        description="Use the dataset's augmentation (CIFAR: random crop pad 4 + flip; image_folder: crop pad image_size/8 + flip "
        "in memory, RandomResizedCrop + flip when streamed).",
    )
    label_file: str | None = Field(
        None,
        description="Real (human) noisy train labels, e.g. CIFAR-10_human.pt / CIFAR-100_human.pt (read without unpickling code); needs noise.kind=none.",
    )
    label_key: str | None = Field(
        None, description="Key in label_file: e.g. worse_label, aggre_label, random_label1 (10N), noisy_label (100N)."
    )
    soft_labels: bool = Field(
        False,
        description="label_file's array (label_key) holds N x K class probabilities: trained on as soft targets (cross-entropy "
        "with soft targets); their arg-max is the noisy label the tables and noise.json use. Not combined with distillation.",
    )
    mean: list[float] | None = Field(
        None, description="Per-channel normalisation mean (None: the dataset's; CIFAR uses ImageNet stats as the reference)."
    )
    std: list[float] | None = Field(None, description="Per-channel normalisation std (None: the dataset's).")
    image_size: int | None = Field(
        None,
        ge=1,
        le=MAX_IMAGE_SIDE,
        description="image_folder: images are resized and cropped to image_size x image_size (None: 224). Other datasets: leave unset.",
    )
    loader: Literal["auto", "memory", "stream"] = Field(
        "auto",
        description="image_folder data path (docs/data.md): memory = decoded once into one uint8 tensor on the device, CIFAR-style "
        "batched crop + flip; stream = DataLoader workers decode every epoch, RandomResizedCrop + flip; auto = memory when the "
        "decoded set fits memory_budget_gb.",
    )
    memory_budget_gb: float = Field(
        4.0, gt=0.0, description="image_folder, loader=auto: largest decoded set (N x 3 x image_size^2 bytes, GB = 1e9) kept in memory."
    )
    workers: Annotated[int, Field(ge=0, le=MAX_WORKERS)] | Literal["auto"] = Field(
        "auto",
        description="image_folder: DataLoader worker processes that decode images (0: in the training process; auto: the usable "
        f"cores less one, at most 8; at most {MAX_WORKERS}). Results do not depend on it.",
    )

    follow_links: bool = Field(
        False,
        description="image_folder: follow symbolic links to folders outside dataset.root (links inside it are followed; a link "
        "back to a folder above it is always refused).",
    )

    @field_validator("workers", mode="before")
    @classmethod
    def _workers_none_is_auto(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool) and not 0 <= v <= MAX_WORKERS:  # a typo must not fork 10000 processes
            raise ValueError(f"dataset.workers={v} is not between 0 and {MAX_WORKERS}: give a few per core, or auto")
        return "auto" if v is None else v

    @model_validator(mode="after")
    def _mean_std(self) -> DatasetConfig:
        if (self.mean is None) != (self.std is None):
            raise ValueError("give dataset.mean and dataset.std together")
        if self.std is not None and self.mean is not None and (len(self.std) != len(self.mean) or any(v <= 0 for v in self.std)):
            raise ValueError("dataset.std needs one positive value per channel, as many as dataset.mean")
        return self


class NoiseConfig(Section):
    kind: NoiseKindName = Field(
        "symmetric",
        description="symmetric: first floor(rate*N) samples get one of the K-1 other classes (reference); uniform: drawn from all K; "
        "bernoulli: each sample flips with prob. rate; asymmetric: class map; pairflip: c -> c+1; transition: rows of noise.matrix "
        "(rate unused); instance: instance-dependent, Xia et al. 2020 (docs/noise.md); or a plugin's kind.",
    )
    rate: float = Field(0.5, ge=0.0, lt=1.0, description="Noise rate epsilon in [0, 1) (instance: the mean flip rate; transition: unused).")
    class_map: dict[int, int] | None = Field(None, description="Asymmetric noise map source->target (default: the dataset's).")
    matrix: list[list[float]] | None = Field(
        None,
        description="transition: the K x K matrix P(noisy=j | clean=i), inline or the path of a .npy / .yaml file, read when the "
        "config is loaded (its values, not the path, are in the run id); rows must sum to 1.",
    )
    matrix_file: str | None = Field(None, description="Set on loading: the file noise.matrix was read from (a record; not in the run id).")
    matrix_sha256: str | None = Field(None, description="Set on loading: sha256 of that file (a record; not in the run id).")
    instance_std: float = Field(0.1, gt=0.0, description="instance: std of the truncated normal of the per-sample flip rates.")
    options: dict[str, Any] = Field(
        {},  # pydantic copies it per instance
        description="A plugin noise kind's own options, validated against the options model it was registered with "
        "(docs/plugins.md); built-in kinds take none. Values equal to the kind's defaults are dropped (they are the same run).",
    )
    probe: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="Memorisation probe: the fraction of training samples whose labels dsd2 flips itself, on top of any noise or "
        "label file, to measure memorisation where no flipped sample is otherwise known (0: none; it changes the experiment; "
        "docs/noise.md).",
    )

    @field_validator("rate", "probe", mode="before")
    @classmethod
    def _not_percent(cls, v: Any, info: ValidationInfo) -> Any:
        return check_fraction(f"noise.{info.field_name}", v)

    @field_validator("rate", "probe")
    @classmethod
    def _finite(cls, v: float) -> float:
        if v != v:
            raise ValueError("noise rate is NaN")
        return v

    @model_validator(mode="before")
    @classmethod
    def _read_matrix_file(cls, data: Any) -> Any:
        # a path is a location, its content the setting: the values go into the config (and so the
        # run id and config.yaml); the path and the file's hash are kept as a record.
        if isinstance(data, dict) and isinstance(data.get("matrix"), str):
            path = data["matrix"]
            values, digest = read_matrix_file(path)
            data = {**data, "matrix": values, "matrix_file": path, "matrix_sha256": digest}
        return data

    @field_validator("matrix")
    @classmethod
    def _stochastic(cls, v: list[list[float]] | None) -> list[list[float]] | None:
        if v is not None:
            check_transition_rows(v)
        return v

    @model_validator(mode="after")
    def _options_of_the_kind(self) -> NoiseConfig:
        # stored without the kind's defaults: giving a default or leaving it out is the same run id
        self.__dict__["options"] = check_choice_options(registry.NOISE_MODELS, self.kind, self.options)
        return self

    def kind_options(self) -> dict[str, Any]:
        """The kind's options with its defaults filled in (what ``NoiseRequest.options`` gets)."""
        return filled_options(registry.NOISE_MODELS, self.kind, self.options)

    @model_validator(mode="after")
    def _matrix_for_transition(self) -> NoiseConfig:
        if self.kind == "transition" and self.matrix is None:
            raise ValueError("noise.kind=transition needs noise.matrix (a K x K list, or the path of a .npy or .yaml file)")
        if self.kind != "transition" and self.matrix is not None:
            raise ValueError(f"noise.matrix is used only by noise.kind=transition, not {self.kind}: remove it")
        return self
