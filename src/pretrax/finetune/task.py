"""A fine-tuning task: the TASK.yaml schema, its validation, and its JSONL examples.

A task file names what GPT-1 (Radford et al. 2018, §3.2-3.3) needs to fine-tune on it:

    name: code_or_comment                 # the run goes to RUN_DIR/finetune/<name> (or --out)
    type: classification                  # | entailment | similarity | multiple_choice
    data:
      train: train.jsonl                  # paths relative to the task file
      validation: validation.jsonl
      fields: {text: line, label: kind}   # JSONL keys, when they differ from the type's defaults
    labels: [code, comment]               # the classes (not for multiple_choice: the label is an option's index)
    max_len: 96                           # tokens per sequence, specials included (0: the run's data.seq_len)
    delimiter: spare                      # `spare`: an unused embedding row as GPT-1's delimiter; or a string
    finetune: {lr: 6.25e-5, batch_size: 32, epochs: 3, lm_weight: 0.5, ...}   # FinetuneSection

Defaults live here, in the dataclasses; a task file states only what differs. Every
problem is one line naming the key (or the file and line of a bad example) and what is valid.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
from typing import Any

from pretrax.errors import ConfigError, DataError

TASK_TYPES = ("classification", "entailment", "similarity", "multiple_choice")

# The JSONL fields each type reads, in the order transforms.py puts them into the sequence(s).
TEXT_FIELDS = {
    "classification": ("text",),
    "entailment": ("premise", "hypothesis"),
    "similarity": ("text_a", "text_b"),
    "multiple_choice": ("context", "choices"),
}


@dataclasses.dataclass(frozen=True)
class FinetuneSection:
    """GPT-1's fine-tuning recipe (§4.1): Adam at 6.25e-5, batch 32, 3 epochs, linear decay after a
    warmup over 0.2% of training, the LM loss added with weight 0.5, dropout 0.1 on the classifier."""

    lr: float = 6.25e-5
    batch_size: int = 32
    epochs: int = 3
    steps: int = 0  # 0: epochs * ceil(train examples / batch_size)
    warmup: float = 0.002  # a fraction of the steps (at least one step)
    lm_weight: float = 0.5  # λ in L3 = L2 + λ·L1
    classifier_dropout: float | None = None  # None: 0.1 when the model has dropout, else 0
    weight_decay: float | None = None  # None: the run's optim.weight_decay
    seed: int = 0  # the head's init, the order of the examples, the dropout masks
    checkpoint_every: int = 0  # 0: once per epoch
    keep: int = 2
    eval_every: int = 0  # 0: at the end only
    log_every: int = 10

    def __post_init__(self):
        positive = {"lr": self.lr, "batch_size": self.batch_size, "keep": self.keep, "log_every": self.log_every}
        for key, value in positive.items():
            if not value > 0:
                raise ConfigError(f"finetune.{key} must be > 0, got {value}")
        for key in ("epochs", "steps", "checkpoint_every", "eval_every"):
            if getattr(self, key) < 0:
                raise ConfigError(f"finetune.{key} must be >= 0, got {getattr(self, key)}")
        if self.epochs == 0 and self.steps == 0:
            raise ConfigError("finetune.epochs and finetune.steps are both 0; give one of them")
        if not 0 <= self.warmup < 1:
            raise ConfigError(f"finetune.warmup is a fraction of the steps in [0, 1), got {self.warmup}")
        if not self.lm_weight >= 0:
            raise ConfigError(f"finetune.lm_weight (λ) must be >= 0, got {self.lm_weight}")
        if self.classifier_dropout is not None and not 0 <= self.classifier_dropout < 1:
            raise ConfigError(f"finetune.classifier_dropout must be in [0, 1), got {self.classifier_dropout}")


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    type: str
    train: str  # absolute paths (resolved against the task file's directory)
    validation: str
    fields: dict[str, str]  # role (text, premise, ..., label) -> JSONL key
    labels: tuple[str, ...]  # () for multiple_choice
    max_len: int = 0
    delimiter: str = "spare"
    finetune: FinetuneSection = FinetuneSection()

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"labels": list(self.labels)}


# key -> (required, nested keys); `labels` is required except for multiple_choice
_TOP = ("name", "type", "data", "labels", "max_len", "delimiter", "finetune")
_DATA = ("train", "validation", "fields")


def load_task(path: str) -> Task:
    from pretrax.config import read_yaml_mapping

    raw = read_yaml_mapping(path, "task file", examples="see evals/finetune/ for one", holds="a mapping")
    return task_from_dict(raw, base_dir=os.path.dirname(os.path.abspath(path)), source=path)


def task_from_dict(raw: dict[str, Any], *, base_dir: str = ".", source: str = "task") -> Task:
    _check_keys(raw, _TOP, "", source)
    data = raw.get("data") if isinstance(raw.get("data"), dict) else {}
    if "data" in raw and not isinstance(raw["data"], dict):
        raise ConfigError(f"{source}: data must be a mapping with train, validation (and fields), "
                          f"got {type(raw['data']).__name__}")
    _check_keys(data, _DATA, "data.", source)
    kind = raw.get("type")
    required = ["name", "type", "data.train", "data.validation"] + (["labels"] if kind != "multiple_choice" else [])
    missing = [k for k in required if _dotted(raw, k) in (None, "", [])]
    if missing:
        raise ConfigError(f"{source} is missing required field{'s' if len(missing) > 1 else ''} "
                          f"{', '.join(missing)} (a task file needs: {', '.join(required)})")
    if kind not in TASK_TYPES:
        raise ConfigError(f"{source}: unknown task type {kind!r}; valid: {', '.join(TASK_TYPES)}")
    name = str(raw["name"])
    if not name or "/" in name or name in (".", ".."):
        raise ConfigError(f"{source}: name {name!r} must be a plain directory name (it names RUN_DIR/finetune/<name>)")
    fields = _fields(kind, data.get("fields") or {}, source)
    labels: tuple[str, ...] = ()
    if kind == "multiple_choice":
        if raw.get("labels"):
            raise ConfigError(f"{source}: a multiple_choice task has no labels list: each example's "
                              f"{fields['label']!r} is the index of its correct choice")
    else:
        if not isinstance(raw["labels"], list) or len(raw["labels"]) < 2:
            raise ConfigError(f"{source}: labels must be a list of at least 2 classes, got {raw['labels']!r}")
        labels = tuple(str(x) for x in raw["labels"])
        if len(set(labels)) != len(labels):
            raise ConfigError(f"{source}: labels must be distinct, got {list(labels)}")
    max_len = raw.get("max_len", 0)
    if not isinstance(max_len, int) or isinstance(max_len, bool) or max_len < 0:
        raise ConfigError(f"{source}: max_len must be an integer >= 0 (0: the run's data.seq_len), got {max_len!r}")
    delimiter = raw.get("delimiter", "spare")
    if not isinstance(delimiter, str) or not delimiter:
        raise ConfigError(f"{source}: delimiter must be 'spare' or a non-empty string, got {delimiter!r}")
    finetune = _finetune_section(raw.get("finetune") or {}, source)
    return Task(name=name, type=kind, train=_path(data["train"], base_dir), validation=_path(data["validation"], base_dir),
                fields=fields, labels=labels, max_len=max_len, delimiter=delimiter, finetune=finetune)


def _finetune_section(raw: Any, source: str) -> FinetuneSection:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: finetune must be a mapping of hyperparameters, got {type(raw).__name__}")
    valid = [f.name for f in dataclasses.fields(FinetuneSection)]
    _check_keys(raw, valid, "finetune.", source)
    values = {}
    for f in dataclasses.fields(FinetuneSection):
        if f.name not in raw:
            continue
        v = raw[f.name]
        want = float if f.name in ("lr", "warmup", "lm_weight", "classifier_dropout", "weight_decay") else int
        if v is None and f.default is None:
            values[f.name] = None
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (want is int and not isinstance(v, int)):
            raise ConfigError(f"{source}: finetune.{f.name} must be {'an integer' if want is int else 'a number'}, "
                              f"got {v!r}")
        values[f.name] = want(v)
    return FinetuneSection(**values)


def _fields(kind: str, given: Any, source: str) -> dict[str, str]:
    roles = TEXT_FIELDS[kind] + ("label",)
    if not isinstance(given, dict):
        raise ConfigError(f"{source}: data.fields must map {', '.join(roles)} to JSONL keys, got {given!r}")
    _check_keys(given, roles, "data.fields.", source)
    return {role: str(given.get(role, role)) for role in roles}


def _check_keys(raw: dict, valid, prefix: str, source: str) -> None:
    for key in raw:
        if key not in valid:
            close = difflib.get_close_matches(str(key), list(valid), n=1, cutoff=0.5)
            hint = f"did you mean '{prefix}{close[0]}'?" if close else f"valid: {', '.join(valid)}"
            raise ConfigError(f"{source}: unknown key '{prefix}{key}'; {hint}")


def _dotted(raw: dict, key: str) -> Any:
    for part in key.split("."):
        raw = raw.get(part) if isinstance(raw, dict) else None
    return raw


def _path(value: Any, base_dir: str) -> str:
    path = os.path.expanduser(str(value))
    return path if os.path.isabs(path) or "://" in path else os.path.normpath(os.path.join(base_dir, path))


@dataclasses.dataclass(frozen=True)
class Example:
    """One example: its text parts in the type's order (TEXT_FIELDS; choices for multiple choice) and its
    label as a class index (the correct choice's index for multiple choice)."""

    parts: tuple[str, ...]
    choices: tuple[str, ...]
    label: int


def load_examples(task: Task, split: str) -> list[Example]:
    """The examples of split 'train' or 'validation', every one checked; DataError names the file and line."""
    path = task.train if split == "train" else task.validation
    if not os.path.isfile(path):
        raise DataError(f"task {task.name!r}: data.{split} file {path!r} does not exist; give a JSONL file "
                        "(paths are relative to the task file)")
    examples = []
    num_choices = None
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: not a JSON object ({e.msg}); each line of a task file is one example") from None
            if not isinstance(record, dict):
                raise DataError(f"{where}: not a JSON object; each line of a task file is one example")
            example = _example(task, record, where)
            if task.type == "multiple_choice":
                if num_choices is None:
                    num_choices = len(example.choices)
                elif len(example.choices) != num_choices:
                    raise DataError(f"{where}: {len(example.choices)} choices where earlier examples have "
                                    f"{num_choices}; every example needs the same number of choices")
            examples.append(example)
    if not examples:
        raise DataError(f"task {task.name!r}: data.{split} file {path!r} holds no examples")
    return examples


def _example(task: Task, record: dict, where: str) -> Example:
    roles = TEXT_FIELDS[task.type] + ("label",)
    missing = [task.fields[r] for r in roles if task.fields[r] not in record]
    if missing:
        raise DataError(f"{where}: missing field{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))} "
                        f"(a {task.type} example needs {', '.join(repr(task.fields[r]) for r in roles)})")
    label = record[task.fields["label"]]
    if task.type == "multiple_choice":
        choices = record[task.fields["choices"]]
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
            raise DataError(f"{where}: {task.fields['choices']!r} must be a list of at least 2 strings")
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(choices):
            raise DataError(f"{where}: label {label!r} is not a choice index; valid: 0..{len(choices) - 1}")
        return Example((str(record[task.fields["context"]]),), tuple(choices), label)
    if str(label) not in task.labels:
        raise DataError(f"{where}: label {label!r} is not one of the declared classes; valid: "
                        f"{', '.join(task.labels)} (the task's labels)")
    parts = tuple(record[task.fields[r]] for r in TEXT_FIELDS[task.type])
    if not all(isinstance(p, str) for p in parts):
        raise DataError(f"{where}: the text fields {', '.join(repr(task.fields[r]) for r in TEXT_FIELDS[task.type])} "
                        "must be strings")
    return Example(parts, (), task.labels.index(str(label)))
