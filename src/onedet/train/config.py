"""Training configuration: one typed dataclass, from which the `onedet train` arguments are generated.

Each field's docstring (the string literal under it) is its `--help` text; its type gives the argument's
parser (`Literal` becomes choices, `bool` a `--flag/--no-flag` pair, `X | None` accepts `none`). Torch-free, so
building the command line stays instant.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import itertools
import textwrap
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal


@dataclass
class TrainConfig:
    data: Path
    """The prepared store (folder with `train` and `val` splits)."""
    out: Path = Path("runs/onedet")
    """Run folder: checkpoints, metrics, plots."""
    preset: str = "base"
    """Model preset: base, small or tiny."""
    pretrained: str | None = "preset"
    """Backbone weights: `preset` (the preset's default), `hub`, a local file, or `none` (random)."""
    epochs: int = 50
    """Number of epochs."""
    batch_size: int = 8
    """Images per step (per process under torchrun)."""
    finetune: Literal["frozen", "lora", "full"] = "frozen"
    """What trains: frozen backbone (default), LoRA adapters on the backbone, or everything."""
    lora_rank: int = 8
    """LoRA rank (with `--finetune lora`)."""
    lr: float = 1e-3
    """Peak learning rate of AdamW (neck and head)."""
    backbone_lr_scale: float = 0.1
    """Backbone (or LoRA adapter) learning rate as a fraction of `lr`, with `--finetune full|lora`."""
    weight_decay: float = 0.05
    """AdamW weight decay (never applied to norms, biases and position embeddings)."""
    warmup_epochs: float = 1.0
    """Linear learning-rate warm-up, in epochs (fractions allowed); cosine decay to 1% afterwards."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value (0 disables)."""
    ema_decay: float = 0.999
    """Decay of the exponential moving average of the weights (evaluated and saved); 0 disables."""
    amp: Literal["auto", "bf16", "off"] = "auto"
    """Mixed precision: `auto` is bf16 on CUDA, and on CPUs with native bf16 when the backbone is frozen (else fp32)."""
    cache_features: bool = False
    """With a frozen backbone, compute its features once per image (and flipped image) and train the neck and
    head on them: much faster epochs on a CPU, but of the augmentations only the horizontal flip remains (no
    scale jitter, crops or colour jitter)."""
    augment: bool = True
    """Batch augmentation (flip, scale jitter, colour) on the device."""
    resume: bool = False
    """Continue the run in `out` where it stopped."""
    seed: int = 0
    """Seed of the weights' initialisation, shuffling and augmentation."""
    device: str = "auto"
    """`auto` (CUDA when present, else CPU), `cpu`, `cuda` or `cuda:N`."""
    workers: int | None = None
    """CPU threads for torch (default: torch's own choice)."""
    eval_every: int = 1
    """Evaluate on the `val` split every N epochs (and after the last)."""
    eval_batch_size: int | None = None
    """Batch size for evaluation (default: `batch_size`)."""
    checkpoint_every_steps: int = 0
    """Also write the `last` checkpoint every N optimizer steps (0: at the end of each epoch only)."""
    max_minutes: float | None = None
    """Wall-clock budget: after each epoch the schedule (cosine included) is refitted to end within it at the pace
    so far (at most `epochs`), and training stops after the epoch during which it runs out."""
    progress: bool = True
    """Show a progress bar."""
    image_size: int | None = None
    """Model input size (default: the store's image size)."""
    model: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Model overrides on top of the preset (Python API only), e.g. `{"num_queries": 100}`."""


@functools.cache
def field_docs(cls: type = TrainConfig) -> dict[str, str]:
    """Each field's docstring, read from the class source (the litgpt / jsonargparse convention); a subclass of
    TrainConfig (`DistillConfig`) adds its own fields' and overrides its bases'."""
    docs: dict[str, str] = {}
    for klass in reversed([k for k in cls.__mro__ if dataclasses.is_dataclass(k)]):
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, after in itertools.pairwise(body):
            is_field = isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
            if is_field and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant):
                docs[node.target.id] = str(after.value.value)
    return docs


def _parse_optional(parse: Any) -> Any:
    def parse_or_none(text: str) -> Any:
        return None if text.lower() in ("none", "null") else parse(text)

    parse_or_none.__name__ = getattr(parse, "__name__", "value")
    return parse_or_none


def add_train_arguments(
    parser: argparse.ArgumentParser, cls: type = TrainConfig, exclude: tuple[str, ...] = ()
) -> None:
    """Declare one `--flag` per field of `cls` (TrainConfig or a subclass) but `exclude`, typed from its
    annotation, with its docstring as help."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        origin = typing.get_origin(hint)
        if origin is dict or f.name in exclude:
            continue  # Python API only
        flag = "--" + f.name.replace("_", "-")
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        kwargs: dict[str, Any] = {"help": docs.get(f.name, "").replace("%", "%%")}
        if not required:
            kwargs["default"] = f.default
            kwargs["help"] += " (default: %(default)s)"
        else:
            kwargs["required"] = True
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = origin in (typing.Union, types.UnionType) and len(args) == 1
        base = args[0] if optional else hint
        if base is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
            continue
        if typing.get_origin(base) is Literal:
            kwargs["choices"] = list(typing.get_args(base))
            parse: Any = type(kwargs["choices"][0])
        else:
            parse = base
        kwargs["type"] = _parse_optional(parse) if optional else parse
        parser.add_argument(flag, **kwargs)


def train_config_from_args(args: argparse.Namespace, cls: type = TrainConfig) -> Any:
    """The TrainConfig (or `cls`) of a parsed `onedet train` (or `onedet distill`) command line."""
    kwargs = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    return cls(**kwargs)


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    """JSON-ready dict of a TrainConfig (paths as strings)."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(cfg).items()}
