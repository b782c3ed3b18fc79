"""``TrainConfig``: everything a training run depends on.

The defaults of the fields that ``dorefa train`` sets come from the flag table
(dorefa.train_flags); the other fields are set by recipes (dorefa.recipes) or from Python.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .bits import Bits
from .train_flags import default


@dataclass
class TrainConfig:
    model: str = default("model")  # registered model name (dorefa.models.list_models())
    data: str = default("data")  # dataset spec, see dorefa.data.get_dataset
    data_dir: str | None = default("data_dir")  # overrides the dataset's default folder
    bits: Bits = default("bits")  # W,A,G; 32 = float. A "1,2,6" string is parsed on construction
    width: float = default("width")  # channel multiplier (0.5/0.25/0.125: models B/C/D)
    keep_first_last: bool = default("keep_first_last")  # float first conv and last linear
    epochs: int = default("epochs")
    batch_size: int = default("batch_size")  # global batch size
    lr: float = default("lr")  # halved at 50% of the epochs unless lr_milestones is set
    weight_decay: float = default("weight_decay")
    seed: int = default("seed")
    threads: int | None = default("threads")  # None = picked from the CPUs (dorefa.cpu)
    subset: int | None = default("subset")  # first N training images only
    test_subset: int | None = default("test_subset")  # first N test images only
    augment: str | None = default("augment")  # None = the dataset's (data.default_augment)
    out: str | None = default("out")  # run folder; None = runs/MODEL-wWaAgG
    resume: bool = default("resume")
    init_from: str | None = default("init_from")  # checkpoint whose weights initialise the model
    device: str = default("device")  # auto | cpu | cuda | cuda:N
    workers: int = default("workers")  # DataLoader workers (for image folders)
    eval_batch_size: int = 500
    progress: bool | None = None  # tqdm bar; None = only when stderr is a terminal
    optimizer: str = default("optimizer")  # adam | sgd (momentum SGD)
    adam_eps: float = 1e-8  # Adam's epsilon (tensorpack's AlexNet: 1e-5)
    momentum: float = 0.9  # sgd only
    nesterov: bool = False  # sgd only
    lr_milestones: tuple | None = None  # ((epoch, factor), ...): lr *= factor from that 0-based
    #                                     epoch on; None = the paper's halving at 50% of epochs
    until_flat: tuple | None = None  # (tolerance, extra): after `epochs`, continue one epoch at a
    #   time while the last two test accuracies differ by > tolerance, <= extra more (optim.py)
    weight_decay_on: str = "all"  # all | weights (conv+linear) | linear (fc) | float (w_bits 32)
    amp: str | None = default("amp")  # None | bf16 | fp16 (CUDA only): autocast of the forward
    engine: str = default("engine")  # torch | int: the products on the integer kernels
    channels_last: bool = default("channels_last")  # NHWC memory format for model and input
    sync_bn: bool = default("sync_bn")  # data-parallel: BatchNorm statistics of the global batch
    recipe: str | None = default("recipe")  # name of the recipe that filled the defaults
    extra: dict = field(default_factory=dict)  # free-form, recorded in config.json

    def __post_init__(self) -> None:
        self.bits = Bits.parse(self.bits)  # a Bits stays as it is; "1,2,6" from Python code
        if self.amp in ("", "none", "fp32"):
            self.amp = None  # float32
        if self.out is None:
            self.out = f"runs/{self.model}-{self.bits.tag}"
        elif not str(self.out).strip():  # an unset shell variable after --out
            raise ValueError(
                "--out is empty; give the run folder, or leave --out out for "
                f"runs/{self.model}-{self.bits.tag}"
            )
