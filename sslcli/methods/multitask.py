"""Several pretext tasks trained together on one backbone, each with its own head: the batches
either alternate between the tasks in proportion to their weights (swapping heads, as in the
lecture) or every batch serves all of them with the weighted sum of their losses. Doersch and
Zisserman, "Multi-task Self-Supervised Visual Learning", ICCV 2017, found complementary tasks
trained together beat each alone.

    method:
      name: multitask
      mode: alternate
      tasks:
        - {name: rotation, weight: 1.0}
        - {name: jigsaw, weight: 1.0, num_permutations: 100}
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn

from ..data.images import Batch
from ..errors import UserError
from ..recipe import MethodConfig, build_section, option
from ..registry import get_method, register_method
from .base import Method, MethodContext, StepOutput


def parse_tasks(tasks: list[dict]) -> list[tuple[type[Method], MethodConfig, float]]:
    """(method class, its config, weight) for each entry of `method.tasks`, with the same strict
    checks as any recipe section."""
    if not tasks:
        raise UserError("method.tasks is empty; list the pretext tasks to train, e.g. [{name: rotation}, {name: jigsaw}]")
    parsed, seen = [], set()
    for i, entry in enumerate(tasks):
        where = f"method.tasks[{i}]"
        entry = dict(entry)
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            raise UserError(f"{where} names no task; give each entry a name, e.g. {{name: rotation, weight: 1}}")
        if name == "multitask":
            raise UserError(f"{where}: multitask cannot contain itself; list single tasks")
        if name in seen:
            raise UserError(f"{where}: task '{name}' is listed twice; give it one entry with the weight you want")
        seen.add(name)
        cls = get_method(name)
        if cls.uses_labels or cls.data_kind != "images":
            raise UserError(f"{where}: '{name}' is not an image pretext task; multitask trains self-supervised image tasks")
        weight = entry.pop("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight <= 0:
            raise UserError(f"{where}.weight must be a positive number, got {weight!r}")
        parsed.append((cls, build_section(cls.Config, entry, where), float(weight)))
    return parsed


@dataclass
class MultitaskConfig(MethodConfig):
    tasks: list[dict] = option(
        [{"name": "rotation", "weight": 1.0}, {"name": "jigsaw", "weight": 1.0}],
        "the tasks: each {name, weight, and that method's own keys}",
    )
    mode: Literal["alternate", "mix"] = option(
        "alternate", "alternate: each batch trains one task, chosen in proportion to the weights; "
        "mix: each batch trains every task on the weighted sum of their losses",
    )

    def validate(self) -> None:
        parse_tasks(self.tasks)


@register_method("multitask")
class Multitask(Method):
    Config = MultitaskConfig
    description = "pretext: several pretext tasks on one backbone, each with its own head (alternating or mixed)"
    def __init__(self, ctx: MethodContext):
        super().__init__(ctx)
        cfg: MultitaskConfig = self.cfg
        self.tasks = nn.ModuleDict()
        weights = []
        for cls, task_cfg, weight in parse_tasks(cfg.tasks):
            task = cls(dataclasses.replace(ctx, recipe=dataclasses.replace(ctx.recipe, method=task_cfg)))
            # the backbone is registered once, here; a task only holds a reference, so the
            # checkpoint stores it once and every task trains the same weights
            del task._modules["backbone"]
            object.__setattr__(task, "backbone", ctx.backbone)
            self.tasks[cls.name] = task
            weights.append(weight)
        self.register_buffer("weights", torch.tensor(weights, dtype=torch.float64))
        self.register_buffer("steps_per_task", torch.zeros(len(weights), dtype=torch.long))

    @classmethod
    def check_data(cls, data, recipe) -> None:
        super().check_data(data, recipe)
        for task_cls, task_cfg, _ in parse_tasks(recipe.method.tasks):
            task_cls.check_data(data, dataclasses.replace(recipe, method=task_cfg))

    def setup(self, train) -> None:
        for task in self.tasks.values():
            task.setup(train)

    def next_task(self) -> int:
        """The task of the next alternating step: the one furthest behind its share of the
        steps (deterministic, and exact on resume since the counts are checkpointed)."""
        done = self.steps_per_task.double()
        share = self.weights / self.weights.sum()
        behind = share * (done.sum() + 1) - done
        return int(behind.argmax())

    def make_views(self, batch: Batch, gen: torch.Generator):
        names = list(self.tasks)
        if self.cfg.mode == "mix":
            return {name: self.tasks[name].make_views(batch, gen) for name in names}
        index = self.next_task()
        self.steps_per_task[index] += 1
        return {names[index]: self.tasks[names[index]].make_views(batch, gen)}

    def shard_views(self, views, n: int):
        return {name: self.tasks[name].shard_views(task_views, n) for name, task_views in views.items()}

    def training_step(self, views) -> StepOutput:
        names = list(self.tasks)
        total, metrics = 0.0, {}
        for name, task_views in views.items():
            loss, task_metrics = self.tasks[name].training_step(task_views)
            weight = float(self.weights[names.index(name)]) if self.cfg.mode == "mix" else 1.0
            total = total + weight * loss
            metrics[f"{name}/loss"] = loss.detach()
            metrics.update({f"{name}/{key}": value for key, value in task_metrics.items()})
        return total, metrics

    def on_step_end(self, progress: float) -> None:
        for task in self.tasks.values():
            task.on_step_end(progress)

    def epoch_warning(self, record: dict[str, float]):
        """Each task's own warning (a collapsing pirl, say), read from its prefixed metrics."""
        for name, task in self.tasks.items():
            own = {key[len(name) + 1:]: value for key, value in record.items() if key.startswith(f"{name}/")}
            warning = task.epoch_warning(own) if own else None
            if warning:
                return f"{name}: {warning}"
        return None

    def visualize(self, images: torch.Tensor):
        for task in self.tasks.values():
            picture = task.visualize(images)
            if picture is not None:
                return picture
        return None
