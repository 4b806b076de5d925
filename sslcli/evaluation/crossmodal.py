"""Cross-modal neighbours: for a clip's sound, the training frames whose embeddings lie nearest in
the one space an audio-visual run with `fusion: distance` learns (AVE-Net, Arandjelović and
Zisserman 2018). The towers' embedding heads live in the run's checkpoint, so this needs the run
folder, not only its weight files."""

from __future__ import annotations


import torch

from ..backbones import ModelRef, create_backbone, parse_model, read_info
from ..errors import UserError
from ..files import digest_matches
from ..methods.base import MethodContext
from ..recipe import resolve_recipe
from ..registry import get_method


def open_joint_model(run: str | ModelRef) -> torch.nn.Module:
    """The whole audio-visual model of run folder `run` (both towers and their embedding heads),
    in eval mode; refused unless it was trained with `fusion: distance`."""
    run = parse_model(run)
    folder = run.path
    ckpt = folder / "checkpoints" / "last.pt" if folder is not None else None
    if folder is None or not folder.is_dir() or not ckpt.is_file():
        raise UserError(f"--query-tower audio needs an audio-visual run folder with checkpoints/last.pt (it holds the "
                        f"embedding heads), not '{run}'")
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for damaged or foreign files
        raise UserError(f"checkpoint '{ckpt}' cannot be read ({type(exc).__name__}); it is damaged") from None
    if not digest_matches(state):
        raise UserError(f"checkpoint '{ckpt}' is damaged: its contents do not match the digest written with it")
    recipe = resolve_recipe(state["recipe"], lambda name: get_method(name).Config)
    if recipe.method.name != "audio-visual" or recipe.method.fusion != "distance":
        what = f"method.fusion={recipe.method.fusion}" if recipe.method.name == "audio-visual" else recipe.method.name
        raise UserError(f"--query-tower audio finds frames by sound in the space an audio-visual run with "
                        f"method.fusion=distance learns; '{run}' is {what}: use --tower audio (sound to sound)")
    info = read_info(run)[0]
    backbone, _ = create_backbone(info.timm_name, info.small_input, info.input_size)
    method = get_method("audio-visual")(MethodContext(recipe, backbone, info.feature_dim, info.input_size))
    method.load_state_dict(state["model"])
    return method.eval()


def sound_embedding(method: torch.nn.Module):
    """Spectrograms -> the audio tower's embeddings (compare with `frame_embedding`)."""
    return lambda x: method.audio_embed(method.audio_backbone(x))


def frame_embedding(method: torch.nn.Module):
    """Frames -> the vision tower's embeddings, in the space the sounds are embedded in."""
    return lambda x: method.vision_embed(method.backbone(x))
