"""Audio-visual correspondence: does this sound go with this frame? Arandjelović and Zisserman,
"Look, Listen and Learn", ICCV 2017 (L3-Net); the distance fusion is their AVE-Net ("Objects that
Sound", ECCV 2018).

A pair is one frame of a clip and the second of sound around a frame. Positives hear the frame's
own moment; negatives hear another clip, or (with `hard_negative_share`) the same clip at least
`hard_negative_gap` seconds away. In training every frame of a batch is paired with every sound
of it (its own: the positive; the others': negatives), the two kinds weighted so negatives make
`negative_share` of the loss: the L3 objective, with a batch's worth of negatives per frame for
the same tower passes. Val pairs follow the paper exactly: half matching, half another clip's.
The vision tower is the backbone; the audio tower is a timm network on one-channel log
spectrograms (`data/spectrogram.py`). Each ends in an `embed_dim` embedding. `fusion: concat`
feeds both to an MLP (L3-Net); `fusion: distance` lets the head see only the Euclidean distance
between the L2-normalised embeddings, so both live in one space and a sound can retrieve frames.
Both towers are written to the run folder.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Literal, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..backbones import create_backbone
from .. import distributed
from ..data.augment import ViewAugment, eval_view
from ..data.clips import SoundPlan
from ..data.images import Batch, load_batches
from ..data.spectrogram import FrontEnd, augment_audio
from ..errors import UserError
from ..recipe import MethodConfig, option
from ..registry import register_method
from ._metrics import balanced_accuracy
from .base import Method, MethodContext, StepOutput, projection_mlp

VAL_SEED = 12345


@dataclass
class AudioVisualConfig(MethodConfig):
    audio_backbone: str = option("resnet18", "timm model of the audio tower (built with one input channel)")
    fusion: Literal["concat", "distance"] = option(
        "concat", "concat: both embeddings into an MLP (L3-Net); distance: the head sees only their distance (AVE-Net)")
    embed_dim: int = option(128, "dimension of each tower's embedding", min=1)
    head_hidden_dim: int = option(128, "hidden width of the concat fusion's MLP", min=1)
    negative_share: float = option(0.5, "weight of the pairs whose sound is not the frame's in the loss", min=0, max=1)
    hard_negative_share: float = option(0.0, "share of the negatives heard from the same clip, far in time", min=0, max=1)
    hard_negative_gap: float = option(1.0, "seconds at least between a hard negative's sound and its frame", min=0)
    sample_rate: int = option(16000, "Hz the sound is resampled to", min=1000)
    seconds: float = option(1.0, "seconds of sound around a frame", min=0.05)
    spectrogram: Literal["mel", "linear"] = option("mel", "log-mel bins, or the linear log spectrogram (L3-Net's 257 bins)")
    n_fft: int = option(512, "FFT size (samples)", min=8)
    window: int = option(400, "analysis window (samples; 400 = 25 ms at 16 kHz)", min=1)
    hop: int = option(160, "hop between spectrogram frames (samples; 160 = 10 ms at 16 kHz)", min=1)
    n_mels: int = option(64, "mel bins", min=1)
    gain_db: float = option(6.0, "augmentation: random gain within +- this many dB", min=0)
    time_shift: float = option(0.1, "augmentation: shift the sound by up to this share of its window", min=0, max=1)
    noise: float = option(0.0, "augmentation: Gaussian noise, as a share of the window's RMS", min=0)
    val_pairs: int = option(512, "fixed val pairs (half matching) scored every epoch, also with noise for sound (0: none)",
                            min=0)

    def front_end(self) -> FrontEnd:
        return FrontEnd(sample_rate=self.sample_rate, seconds=self.seconds, n_fft=self.n_fft, window=self.window,
                        hop=self.hop, scale=self.spectrogram, n_mels=self.n_mels)

    def validate(self) -> None:
        try:
            self.front_end().check()
        except ValueError as exc:
            raise UserError(f"method.{exc}") from None


def far_frames(shown: torch.Tensor, frames: int, gap: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """For each shown frame, a random frame at least `gap` frames away, and whether one exists."""
    far = (torch.arange(frames, device=shown.device)[None] - shown[:, None]).abs() >= max(gap, 1)
    pick = torch.rand(len(shown), frames, generator=gen, device=shown.device).masked_fill(~far, -1.0).argmax(1)
    return pick, far.any(1)


def make_pairs(clips: int, frames: int, negative_share: float, hard_share: float, gap: int, gen: torch.Generator
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each of `clips` items of `frames` frames: the frame shown, the clip and frame whose
    sound is heard, and the label (1: the frame's own sound). Negatives hear another clip at a
    random frame, or (a `hard_share` of them) the same clip at least `gap` frames away."""
    device = gen.device
    if clips < 2:
        raise ValueError("audio-visual pairs need at least two clips in a batch")
    rows = torch.arange(clips, device=device)
    shown = torch.randint(frames, (clips,), generator=gen, device=device)
    negative = torch.rand(clips, generator=gen, device=device) < negative_share
    hard = negative & (torch.rand(clips, generator=gen, device=device) < hard_share)
    other = (rows + torch.randint(1, clips, (clips,), generator=gen, device=device)) % clips
    far_pick, has_far = far_frames(shown, frames, gap, gen)
    hard &= has_far  # a clip too short for a far moment hears another clip instead
    anywhere = torch.randint(frames, (clips,), generator=gen, device=device)
    heard_clip = torch.where(negative & ~hard, other, rows)
    heard_frame = torch.where(hard, far_pick, torch.where(negative, anywhere, shown))
    return shown, heard_clip, heard_frame, (~negative).float()


@register_method("audio-visual")
class AudioVisual(Method):
    Config = AudioVisualConfig
    description = "video and sound: say whether a second of sound belongs to a frame (two towers, L3-Net / AVE-Net)"
    data_kind = "video"

    def __init__(self, ctx: MethodContext):
        super().__init__(ctx)
        cfg: AudioVisualConfig = self.cfg
        self.augment = ViewAugment(ctx.recipe.augment, self.crop_size)
        self.front_end = cfg.front_end()
        self.audio_backbone, info = create_backbone(cfg.audio_backbone, False, self.front_end.bins, in_chans=1)
        self.audio_info = replace(info, mean=[0.0], std=[1.0], front_end=self.front_end.to_dict())
        self.vision_embed = projection_mlp(ctx.feature_dim, 512, cfg.embed_dim)
        self.audio_embed = projection_mlp(info.feature_dim, 512, cfg.embed_dim)
        if cfg.fusion == "concat":
            self.head = nn.Sequential(nn.Linear(2 * cfg.embed_dim, cfg.head_hidden_dim), nn.ReLU(inplace=True),
                                      nn.Linear(cfg.head_hidden_dim, 1))
        else:  # a near pair is a match: the logit falls with the distance
            self.head = nn.Linear(1, 1)
            with torch.no_grad():
                self.head.weight.fill_(-5.0)
                self.head.bias.fill_(5.0)
        self._val: Optional[tuple[torch.Tensor, ...]] = None

    @classmethod
    def sound_plan(cls, recipe) -> SoundPlan:
        return SoundPlan(recipe.method.sample_rate, recipe.method.seconds)

    @classmethod
    def check_data(cls, data: Any, recipe) -> None:
        super().check_data(data, recipe)
        m, d = recipe.method, recipe.data
        if m.hard_negative_share > 0 and (d.clip_frames - 1) / d.fps < m.hard_negative_gap:
            raise UserError(f"hard negatives need moments {m.hard_negative_gap:g} s apart, but an item holds "
                            f"data.clip_frames={d.clip_frames} frames at data.fps={d.fps:g}; raise data.clip_frames or "
                            f"lower method.hard_negative_gap")

    def towers(self) -> dict[str, tuple[nn.Module, Any]]:
        return {"audio_backbone": (self.audio_backbone, self.audio_info)}

    def make_views(self, batch: Batch, gen: torch.Generator):
        images = batch.images
        audio = batch.audio
        if audio is None:
            raise ValueError("audio-visual needs the sound of its clips")
        cfg = self.cfg
        clips, length = images.shape[:2]
        rows = torch.arange(clips, device=images.device)
        shown = torch.randint(length, (clips,), generator=gen, device=images.device)
        far, has_far = far_frames(shown, length, math.ceil(cfg.hard_negative_gap * self.recipe.data.fps), gen)
        hard = has_far & (torch.rand(clips, generator=gen, device=images.device) < cfg.hard_negative_share)
        # sounds: each clip's own moment (column i is frame i's positive), then the hard negatives
        heard_clip, heard_frame = torch.cat([rows, rows[hard]]), torch.cat([shown, far[hard]])
        frames = self.augment(images[rows, shown], gen)
        wave = augment_audio(audio[heard_clip, heard_frame].float(), gen, cfg.gain_db, cfg.time_shift, cfg.noise)
        return frames, self.front_end(wave), 0, clips  # the frames are the batch's from item 0, of `clips`

    def shard_views(self, views, n: int):
        """This rank's frames; every sound, since each frame is scored against all of them."""
        frames, spectrograms, _, _ = views
        return distributed.share(frames, n), spectrograms, distributed.rank() * (n // distributed.world_size()), n

    def embed(self, frames: torch.Tensor, spectrograms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each tower's embedding of frames (n, 3, S, S) and of spectrograms (m, 1, bins, steps)."""
        return (self.vision_embed(self.backbone(frames)).float(),
                self.audio_embed(self.audio_backbone(spectrograms)).float())

    def fuse(self, v: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """Match scores of embeddings paired row by row: (..., D) and (..., D) -> (...)."""
        if self.cfg.fusion == "concat":
            return self.head(torch.cat([v, a], -1)).squeeze(-1)
        distance = (F.normalize(v, dim=-1) - F.normalize(a, dim=-1)).norm(dim=-1, keepdim=True)
        return self.head(distance).squeeze(-1)

    def logits(self, frames: torch.Tensor, spectrograms: torch.Tensor) -> torch.Tensor:
        """(n,) match scores of n frames and the n sounds paired with them."""
        return self.fuse(*self.embed(frames, spectrograms))

    def training_step(self, views) -> StepOutput:
        """Frames `first`..`first`+n-1 of a batch of `total` (all of it in one process) against all m
        sounds; sound i is frame i's own. Each process's share of the rows, scaled by total/n, so
        the gradients averaged over the processes are the whole batch's."""
        frames, spectrograms, first, total = views
        v, a = self.embed(frames, spectrograms)
        n, m = len(v), len(a)
        logits = self.fuse(v[:, None].expand(n, m, -1), a[None].expand(n, m, -1))  # every frame with every sound
        rows = torch.arange(n, device=logits.device)
        match = torch.zeros(n, m, device=logits.device)
        match[rows, first + rows] = 1.0
        share = min(max(self.cfg.negative_share, 0.05), 0.95)
        weight = torch.where(match.bool(), (1 - share) / total, share / (total * m - total))
        loss = (F.binary_cross_entropy_with_logits(logits, match, reduction="none") * weight).sum() * (total / n)
        with torch.no_grad():
            right = (logits > 0).float() == match
            own = right[rows, first + rows].float().mean()
            other_clip = right[:, :total][~match[:, :total].bool()].float().mean()
        # match_bacc: the paper's measure, a frame with its own sound and with another clip's, weighed alike
        return loss, {"match_bacc": 0.5 * (own + other_clip), "own_acc": own, "other_clip_acc": other_clip}

    # -- the fixed val pairs
    @torch.no_grad()
    def _val_pairs(self, val: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Pairs drawn once with a fixed seed from val clips, exactly half of them matching, each
        negative hearing another clip: (uint8 frames, spectrograms, labels, and the spectrograms
        of noise as loud as each sound)."""
        gen = torch.Generator().manual_seed(VAL_SEED)
        split = val.for_epoch(VAL_SEED, 0)
        order = torch.randperm(len(split), generator=gen)[: self.cfg.val_pairs]
        frames, spectrograms, labels, loudness = [], [], [], []
        for batch in load_batches(split, list(order.split(64))):
            n = len(batch.images)
            if n < 2:
                continue
            shown, heard_clip, heard_frame, _ = make_pairs(n, batch.images.shape[1], 1.0, 0.0, 0, gen)
            match = torch.arange(n) % 2 == 0
            heard_clip = torch.where(match, torch.arange(n), heard_clip)
            heard_frame = torch.where(match, shown, heard_frame)
            frames.append(batch.images[torch.arange(n), shown])
            wave = batch.audio[heard_clip, heard_frame].float()
            spectrograms.append(self.front_end(wave))
            loudness.append(wave.square().mean(1, keepdim=True).sqrt())
            labels.append(match.float())
        loud = torch.cat(loudness)
        noise = torch.randn(len(loud), self.front_end.samples, generator=torch.Generator().manual_seed(VAL_SEED)) * loud
        noises = torch.cat([self.front_end(chunk) for chunk in noise.split(128)])
        return torch.cat(frames), torch.cat(spectrograms), torch.cat(labels), noises

    @torch.no_grad()
    def epoch_metrics(self, val: Any) -> dict[str, float]:
        """Balanced match accuracy on the fixed val pairs, and with the sound replaced by noise of
        the same loudness (a model that hears nothing scores 0.5)."""
        if val is None or not self.cfg.val_pairs or len(val) < 2:
            return {}
        if self._val is None:
            self._val = self._val_pairs(val)
        frames, spectrograms, labels, noises = self._val
        device = next(self.parameters()).device
        result = {}
        for name, heard in (("match", spectrograms), ("noise", noises)):
            logits = [self.logits(eval_view(frames[i:i + 128].to(device)), heard[i:i + 128].to(device))
                      for i in range(0, len(labels), 128)]
            result[f"val_{name}_bacc"] = float(balanced_accuracy(torch.cat(logits), labels.to(device)))
        return result
