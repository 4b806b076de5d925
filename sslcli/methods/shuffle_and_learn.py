"""Shuffle and Learn: is a triplet of frames in temporal order? Misra, Zitnick and Hebert,
"Shuffle and Learn: Unsupervised Learning using Temporal Order Verification", ECCV 2016.

From a window of a clip where things move (each frame scored by its mean absolute difference
from the next, and every frame of the window moving), five frames a < b < c < d < e are drawn. (b, c, d) and its reverse (d, c, b) are
in order; (b, a, d) and (b, e, d) are not: the middle frame is no interpolation of the ends. One
backbone embeds the three frames (shared weights), the embeddings are concatenated, and an
MLP says in order or not. The three frames share one augmentation, so colour or framing gives
no clue; only what moves does. A clip whose every window is still yields no tuple.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import distributed
from ..data.augment import ViewAugment, eval_view, to_float
from ..data.images import Batch, load_batches
from ..errors import UserError
from ..recipe import MethodConfig, option
from ..registry import register_method
from ._metrics import accuracies, answer_counts, balanced_accuracy
from .base import Method, MethodContext, StepOutput

SCAN_CLIPS = 64  # training clips looked at before training for a window of motion


def frame_motion(clips: torch.Tensor) -> torch.Tensor:
    """(B, T, C, H, W) frames (uint8 or [0, 1]) -> (B, T - 1): mean absolute difference between
    each frame and the next, in units of the [0, 1] pixel range."""
    if clips.ndim != 5 or clips.shape[1] < 2:
        raise ValueError(f"frame_motion expects clips (B, T, C, H, W) with T >= 2, got {tuple(clips.shape)}")
    x = to_float(clips)
    return (x[:, 1:] - x[:, :-1]).abs().mean((2, 3, 4))


def window_motion(motion: torch.Tensor, window: int) -> torch.Tensor:
    """(B, T - 1) motion -> (B, T - window + 1): the least motion between consecutive frames of
    each window of `window` frames (a window moves only if every frame of it moves)."""
    steps = motion.shape[1] + 1
    if not 5 <= window <= steps:
        raise ValueError(f"a window of {window} frames needs 5 <= window <= the clip's {steps} frames")
    return motion.unfold(1, window - 1, 1).amin(-1)


def motion_windows(motion: torch.Tensor, window: int, threshold: float) -> torch.Tensor:
    """(B, T - 1) motion -> (B, T - window + 1) bool: windows in which every frame differs from
    the next by at least `threshold`."""
    return window_motion(motion, window) >= threshold


def sample_tuples(valid: torch.Tensor, window: int, negative_share: float, gen: torch.Generator
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each clip with a valid window: the clip's row, the frame indices of its triplet (3,)
    and its label (1 in order, 0 shuffled). A valid window is drawn at random; in it, five frames
    a < b < c < d < e. Negatives, with probability `negative_share`, are (b, a, d) or (b, e, d);
    positives (b, c, d) or (d, c, b), half each."""
    device = valid.device
    rows = torch.nonzero(valid.any(1)).flatten()
    n = len(rows)
    if n == 0:
        return rows, torch.zeros(0, 3, dtype=torch.long, device=device), torch.zeros(0, device=device)
    pick = torch.rand(valid.shape, generator=gen, device=device).masked_fill(~valid, -1.0)[rows].argmax(1)
    offsets = torch.rand(n, window, generator=gen, device=device).argsort(1)[:, :5].sort(1).values
    a, b, c, d, e = (pick[:, None] + offsets).unbind(1)
    negative = torch.rand(n, generator=gen, device=device) < negative_share
    coin = torch.rand(n, generator=gen, device=device) < 0.5
    middle = torch.where(negative, torch.where(coin, a, e), c)
    first, last = torch.where(~negative & coin, d, b), torch.where(~negative & coin, b, d)
    return rows, torch.stack([first, middle, last], 1), (~negative).float()


@dataclass
class ShuffleAndLearnConfig(MethodConfig):
    window: int = option(8, "frames of the window a tuple's five frames a < b < c < d < e come from", min=5)
    motion_threshold: float = option(
        0.01, "a window is used when each of its frames differs from the next by at least this much (mean "
              "absolute difference, pixel values in [0, 1]); windows with a still moment give no tuple", min=0)
    negative_share: float = option(0.75, "share of shuffled tuples (the paper's best: 0.75)", min=0, max=1)
    head_hidden_dim: int = option(512, "hidden width of the MLP on the three concatenated embeddings", min=1)
    val_tuples: int = option(512, "fixed val tuples whose order accuracy is logged every epoch (0: none)", min=0)


@register_method("shuffle-and-learn")
class ShuffleAndLearn(Method):
    Config = ShuffleAndLearnConfig
    description = "video pretext: say whether three frames of a clip are in temporal order (motion-sampled tuples)"
    data_kind = "video"

    def __init__(self, ctx: MethodContext):
        super().__init__(ctx)
        cfg: ShuffleAndLearnConfig = self.cfg
        self.augment = ViewAugment(ctx.recipe.augment, self.crop_size)
        self.head = nn.Sequential(nn.Linear(3 * ctx.feature_dim, cfg.head_hidden_dim), nn.ReLU(inplace=True),
                                  nn.Linear(cfg.head_hidden_dim, 1))
        self._val: Optional[dict[str, tuple[torch.Tensor, torch.Tensor]]] = None

    @classmethod
    def check_data(cls, data: Any, recipe) -> None:
        super().check_data(data, recipe)
        if recipe.method.window > recipe.data.clip_frames:
            raise UserError(f"shuffle-and-learn draws tuples from windows of method.window={recipe.method.window} frames, "
                            f"more than the data.clip_frames={recipe.data.clip_frames} of an item; raise "
                            f"data.clip_frames or lower method.window")

    def tuples(self, clips: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(rows of the clips that gave a tuple, their (n, 3, C, S, S) frames, labels)."""
        valid = motion_windows(frame_motion(clips), self.cfg.window, self.cfg.motion_threshold)
        rows, index, labels = sample_tuples(valid, self.cfg.window, self.cfg.negative_share, gen)
        return rows, clips[rows[:, None], index], labels

    @torch.no_grad()
    def setup(self, train: Any) -> None:
        """Refuse, before training, data in which no sampled clip has a window of motion."""
        sample = torch.arange(min(len(train), SCAN_CLIPS))
        best = 0.0
        for clips, _, _ in load_batches(train.for_epoch(self.recipe.train.seed, 0), [sample]):
            motion = window_motion(frame_motion(clips), self.cfg.window)
            best = max(best, float(motion.max())) if motion.numel() else best
        if best < self.cfg.motion_threshold:
            raise UserError(
                f"shuffle-and-learn found no window of {self.cfg.window} frames that moves: in the {len(sample)} clips "
                f"looked at, the most motion is {best:.4f}, under method.motion_threshold={self.cfg.motion_threshold:g}; "
                f"lower the threshold or give clips in which something moves")

    def make_views(self, batch: Batch, gen: torch.Generator):
        """(3t frames, t labels, the clip of each tuple, t, n clips): t tuples from the n clips that moved."""
        images = batch.images
        rows, frames, order = self.tuples(images, gen)
        if not len(order):  # no clip of this batch moved
            empty = images.new_zeros((0, 3, self.crop_size, self.crop_size), dtype=torch.float)
            return empty, order, rows, 0, images.shape[0]
        state = gen.get_state()
        views = []
        for k in range(3):  # one augmentation for the three frames: the same draws from the same state
            gen.set_state(state)
            views.append(self.augment(frames[:, k], gen))
        return torch.stack(views, 1).flatten(0, 1), order, rows, len(order), images.shape[0]

    def shard_views(self, views, n: int):
        """The tuples of this rank's clips (a share may hold more or fewer tuples than another's)."""
        frames, order, rows, total, clips = views
        part, r = n // distributed.world_size(), distributed.rank()
        mine = (rows >= r * part) & (rows < (r + 1) * part)
        return frames.view(-1, 3, *frames.shape[1:])[mine].flatten(0, 1), order[mine], rows[mine], total, clips

    def logits(self, frames: torch.Tensor) -> torch.Tensor:
        """(3n, C, S, S) frames, three per tuple -> (n,) in-order scores."""
        f = self.backbone(frames).float().view(-1, 3, self.feature_dim)
        # what the three frames share (the scene, the object's look) dwarfs what tells them apart;
        # centring each tuple's embeddings leaves the head their differences, at their true scale
        f = f - f.mean(1, keepdim=True)
        return self.head(f.flatten(1)).squeeze(1)

    def training_step(self, views) -> StepOutput:
        """The mean loss over the batch's `total` tuples, of which this process holds its clips' (all
        of them in one process); scaled so the gradients averaged over processes are the batch's,
        with the accuracies counted over every process's tuples."""
        frames, order, _, total, clips = views
        if not total:  # no clip of this batch moved: nothing to learn, nothing to log
            zero = sum(p.sum() for p in self.head.parameters()) * 0.0
            return zero, {"tuples_share": torch.zeros(())}
        logits = self.logits(frames) if len(order) else frames.new_zeros(0)
        # both answers weigh the same in the loss, so always saying "shuffled" (75% right) is no minimum
        share = min(max(self.cfg.negative_share, 0.05), 0.95)
        summed = F.binary_cross_entropy_with_logits(logits, order, pos_weight=torch.tensor(share / (1 - share)),
                                                    reduction="sum")
        if not len(order):  # this process's clips gave no tuple: the head still takes part, with zero
            summed = summed + sum(p.sum() for p in self.head.parameters()) * 0.0
        loss = summed * (distributed.world_size() / total)
        with torch.no_grad():
            acc, bacc = accuracies(distributed.all_reduce_sum(answer_counts(logits, order)))
            metrics = {"order_acc": acc, "order_bacc": bacc, "tuples_share": torch.tensor(total / clips)}
        return loss, metrics

    # -- the fixed val tuples
    @torch.no_grad()
    def _val_tuples(self, val: Any) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Tuples drawn once, with a fixed seed, from val clips as they are ("order") and with each
        clip's frames shuffled in time ("shuffled": labels then say nothing of real order)."""
        gen = torch.Generator().manual_seed(12345)
        split = val.for_epoch(12345, 0)
        out: dict[str, list] = {"order": [], "shuffled": []}
        count = 0
        for clips, _, _ in load_batches(split, list(torch.arange(len(split)).split(64))):
            mixed = clips[:, torch.randperm(clips.shape[1], generator=gen)]
            for name, source in (("order", clips), ("shuffled", mixed)):
                _, frames, order = self.tuples(source, gen)
                out[name].append((frames, order))
            count += len(out["order"][-1][1])
            if count >= self.cfg.val_tuples:
                break
        return {name: (torch.cat([f for f, _ in parts])[: self.cfg.val_tuples],
                       torch.cat([o for _, o in parts])[: self.cfg.val_tuples]) for name, parts in out.items()}

    @torch.no_grad()
    def epoch_metrics(self, val: Any) -> dict[str, float]:
        """Balanced order accuracy on the fixed val tuples, and on the time-shuffled control."""
        if val is None or not self.cfg.val_tuples or not len(val):
            return {}
        if self._val is None:
            self._val = self._val_tuples(val)
        device = next(self.parameters()).device
        result = {}
        for name, (frames, order) in self._val.items():
            if not len(order):
                continue
            logits = torch.cat([self.logits(eval_view(chunk.flatten(0, 1).to(device)))
                                for chunk in frames.split(128)])
            result[f"val_{name}_bacc"] = float(balanced_accuracy(logits, order.to(device)))
        return result
