"""The evaluation commands behind the CLI: open the model and the data, extract, judge."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from .. import distributed
from ..backbones import BackboneInfo, ModelRef, load_model, parse_model
from ..data.images import Split, read_image
from ..data.clips import SoundPlan
from ..data.sources import ClipSettings, DataSource, hear, open_source
from ..data.spectrogram import FrontEnd
from ..device import select_device
from ..errors import UserError
from .features import extract_features, select_layers
from .knn import knn_predict, topk_accuracy

DEFAULT_DATA = "synthetic:shapes"
ROOT_HINT = "pass --data-root FOLDER"


@dataclass(frozen=True)
class DataChoice:
    """The data an evaluation judges on, where its torchvision files live, and why it was chosen."""

    source: str
    root: str | None
    chosen_by: str  # "--data", "run" (the run's own recipe) or "default"
    why: str = ""  # for a fallback: why the run's data could not be used


def _run_data_section(ref: ModelRef) -> tuple[dict, str]:
    """The `data` section of the recipe.yaml that goes with MODEL (inside a run folder, or beside
    a backbone.safetensors file that still sits in its run folder), or ({}, why there is none)."""
    if ref.run_folder is None:
        return {}, f"'{ref}' was trained on no data"
    recipe = ref.run_folder / "recipe.yaml"
    if not recipe.is_file():
        return {}, f"there is no recipe.yaml beside '{ref}'"
    import yaml

    try:
        section = (yaml.safe_load(recipe.read_text()) or {}).get("data")
    except (yaml.YAMLError, AttributeError, OSError):
        return {}, f"'{recipe}' cannot be read"
    if not isinstance(section, dict) or not isinstance(section.get("source"), str) or not section["source"]:
        return {}, f"'{recipe}' names no data.source"
    return section, ""


def choose_data(model: str | ModelRef, data: str | None, root: str | None = None) -> DataChoice:
    """`--data` as given, else the data a run was trained on, else synthetic:shapes; `--data-root`
    as given, else the run's own data.root."""
    section, why = _run_data_section(parse_model(model))
    run_root = section.get("root") if isinstance(section.get("root"), str) else None
    root = root or run_root
    if data:
        return DataChoice(data, root, "--data")
    if section:
        return DataChoice(section["source"], root, "run")
    return DataChoice(DEFAULT_DATA, root, "default", why)


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def announce(choice: DataChoice, model_spec: str) -> None:
    """Say on stderr which data was chosen when --data was not given, and why."""
    if choice.chosen_by == "run":
        print(f"note: no --data given: judging on '{choice.source}', the data '{model_spec}' was trained on",
              file=sys.stderr)
    elif choice.chosen_by == "default":
        print(f"note: no --data given and {choice.why}: judging on the default '{choice.source}'; "
              f"pass --data to choose", file=sys.stderr)


def _as_choice(data: DataChoice | str) -> DataChoice:
    return data if isinstance(data, DataChoice) else DataChoice(data, None, "--data")


def data_fields(choice: DataChoice) -> dict:
    """What a --json result says about the data: the source, how it was chosen, the root."""
    return {"data": choice.source, "data_chosen_by": choice.chosen_by,
            **({"data_root": choice.root} if choice.root else {})}


def _clip_settings(section: dict, frames: int | None) -> tuple[ClipSettings, int, str]:
    """How to read clips for evaluation: the run's fps, longest stretch and kind when it has
    them; `frames` (else the run's data.eval_frames, else 8) evenly spaced frames per clip."""
    def number(key: str, default: float) -> float:
        value = section.get(key)
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else default

    kind = section.get("kind") if section.get("kind") in ("images", "video") else "auto"
    frames = frames or int(number("eval_frames", 8))
    return ClipSettings(fps=number("fps", 8.0), max_seconds=number("max_clip_seconds", 30.0)), frames, kind


def open_model_and_data(model_spec: str | ModelRef, data: DataChoice | str, purpose: str, need_labels: bool = True,
                        frames: int | None = None, tower: str = "vision") -> tuple[torch.nn.Module, BackboneInfo, DataSource]:
    """The model and data for an evaluation; images at the size the model was trained at, clips
    as `frames` evenly spaced frames each. `tower="audio"`: an audio-visual run's audio tower
    (its front-end settings in `info.front_end`), with the clips read with sound."""
    choice = _as_choice(data)
    if tower not in ("vision", "audio"):
        raise UserError(f"--tower '{tower}' is unknown; use vision or audio")
    size = "auto"
    model_spec = parse_model(model_spec)
    if model_spec.is_random:  # refuse a bad name before the data is read
        from ..backbones import check_backbone_name

        check_backbone_name(model_spec.random_name)
    else:
        model, info = load_model(model_spec, tower=tower)
        size = info.input_size
        if tower == "audio":
            if front_end_of(info) is None:
                raise UserError(f"'{model_spec}' is a vision backbone, with no audio front end; --tower audio needs an "
                                f"audio-visual run folder or its audio_backbone.safetensors")
            size = _vision_size(model_spec)
    section = _run_data_section(model_spec)[0]
    bad = section.get("max_bad_fraction")  # a run's own tolerance for damaged images
    clips, frames, kind = _clip_settings(section, frames)
    ds = open_source(choice.source, size, purpose="eval", root=choice.root, root_hint=ROOT_HINT, clips=clips,
                     kind=kind if choice.chosen_by == "run" else "auto",
                     **({"max_bad_fraction": float(bad)} if isinstance(bad, (int, float)) else {}))
    ds.train = ds.train.for_eval(frames)
    ds.val = ds.val.for_eval(frames) if ds.val is not None else None
    if model_spec.is_random:
        model, info = load_model(model_spec, ds.image_size, tower)
        if tower == "audio":
            info = replace(info, front_end=FrontEnd().to_dict())
    if tower == "audio":
        front_end = front_end_of(info)
        ds = hear(ds, SoundPlan(front_end.sample_rate, front_end.seconds), f"{purpose} --tower audio")
    if need_labels and not ds.labelled:
        raise UserError(
            f"{purpose} needs labelled train and val splits, but '{choice.source}' has "
            f"{'no labels' if not ds.train.labelled else 'no val split'}; use a folder of class subfolders "
            f"(optionally under train/ and val/)"
        )
    return model, info, ds


def _vision_size(model_spec: ModelRef) -> int | str:
    """The frame size of the run an audio tower comes from (its vision backbone's), else auto."""
    from ..backbones import read_info

    try:
        return read_info(model_spec)[0].input_size
    except UserError:
        return "auto"


def front_end_of(info: BackboneInfo):
    """The spectrogram front end an audio tower hears through, or None for a vision backbone."""
    return FrontEnd.from_dict(info.front_end) if info.front_end else None


def parse_ks(text: str) -> list[int]:
    try:
        ks = [int(part) for part in str(text).split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--k '{text}' must be a number or a comma-separated list, e.g. --k 10,20,50") from None
    if not ks or min(ks) < 1:
        raise UserError(f"--k '{text}' must hold positive numbers, e.g. --k 20")
    return ks


def run_knn(model_spec: str | ModelRef, data: DataChoice | str, *, k: str | int = 20, temperature: float = 0.07,
            layer: str = "last", batch_size: int = 256, device: str = "auto", frames: int | None = None,
            warn=None, tower: str = "vision") -> dict:
    """Weighted kNN from train to val; several k values share one feature pass. A k larger than
    the training split is capped at its size, with one warning, and reported as used."""
    model_spec = parse_model(model_spec)
    started = time.time()
    choice = _as_choice(data)
    asked = parse_ks(str(k))
    dev = select_device(device)
    model, info, ds = open_model_and_data(model_spec, choice, "knn", frames=frames, tower=tower)
    chosen = select_layers(model, layer)
    if len(chosen) != 1:
        raise UserError(f"--layer takes one layer, got '{layer}'; use `sslcli probe --layers` for several")
    layers = None if chosen[0] is None else chosen
    announce(choice, model_spec)  # every refusal is behind us: a refused command prints one line
    hear_by = front_end_of(info)
    train_f, train_y = _features(model, ds.train, dev, batch_size, layers, hear_by)
    val_f, val_y = _features(model, ds.val, dev, batch_size, layers, hear_by)
    n_train = len(train_f)
    capped = sorted({kk for kk in asked if kk > n_train})
    if capped:
        (warn or _warn)(f"--k {','.join(map(str, capped))} is more than the {n_train} training images; "
                        f"using k={n_train} (every training image votes)")
    sweep = []
    for kk in asked:
        used = min(kk, n_train)
        scores = knn_predict(train_f, train_y, val_f, len(ds.classes), k=used, temperature=temperature)
        acc = topk_accuracy(scores, val_y, (1, 5))
        sweep.append({"k": used, **({"k_asked": kk} if kk != used else {}), "top1": round(acc[1], 6),
                      "top5": round(acc[5], 6)})
    result = {
        **sweep[0], "temperature": temperature, "layer": layer, "n_train": n_train, "n_val": len(val_f),
        "model": str(model_spec), **data_fields(choice), "backbone": info.timm_name, "feature_dim": int(train_f.shape[1]),
        "tower": tower, "seconds": round(time.time() - started, 2),
    }
    if len(asked) > 1:
        result["sweep"] = sweep
    return result


def _features(model, split, device, batch_size, layers, front_end=None):
    if layers is None:
        return extract_features(model, split, device, batch_size, front_end=front_end)
    feats, labels = extract_features(model, split, device, batch_size, layers=layers, front_end=front_end)
    return next(iter(feats.values())), labels


def run_probe(model_spec: str | ModelRef, data: DataChoice | str, *, layers: str = "last", epochs: int = 100, lr: float = 1e-3,
              weight_decay: float = 1e-4, batch_size: int = 256, device: str = "auto", seed: int = 0,
              frames: int | None = None, tower: str = "vision") -> dict:
    """Linear probes on frozen features of each chosen layer; features extracted once."""
    model_spec = parse_model(model_spec)
    from .probe import train_linear_probe

    started = time.time()
    choice = _as_choice(data)
    dev = select_device(device)
    model, info, ds = open_model_and_data(model_spec, choice, "probe", frames=frames, tower=tower)
    chosen = select_layers(model, layers)
    announce(choice, model_spec)
    hear_by = front_end_of(info)
    train_f, train_y = extract_features(model, ds.train, dev, 256, normalize=False, layers=chosen, front_end=hear_by)
    val_f, val_y = extract_features(model, ds.val, dev, 256, normalize=False, layers=chosen, front_end=hear_by)
    extracted = time.time() - started
    rows = []
    for name in train_f:
        acc = train_linear_probe(train_f[name], train_y, val_f[name], val_y, len(ds.classes), epochs=epochs, lr=lr,
                                 weight_decay=weight_decay, batch_size=batch_size, seed=seed, device=dev)
        rows.append({"layer": name, "dims": int(train_f[name].shape[1]),
                     **{k: round(v, 6) for k, v in acc.items()}})
    return {
        "model": str(model_spec), **data_fields(choice), "backbone": info.timm_name, "tower": tower, "layers": rows,
        "epochs": epochs, "lr": lr,
        "weight_decay": weight_decay, "n_train": len(ds.train), "n_val": len(ds.val),
        "extract_seconds": round(extracted, 2), "seconds": round(time.time() - started, 2),
    }


@torch.no_grad()
def classifier_accuracy(method, split, device: torch.device, batch_size: int = 256, precision: str = "auto") -> dict:
    """Top-1/top-5 of a trained supervised method on a labelled split (whole images, no augmentation)."""
    method.eval()
    scores, labels = extract_features(method.classify, split, device, batch_size, precision, normalize=False)
    acc = topk_accuracy(scores, labels, (1, 5))
    return {"top1": round(acc[1], 6), "top5": round(acc[5], 6)}


def run_neighbours(model_spec: str | ModelRef, data: DataChoice | str, out: Path, *, queries: int = 8, k: int = 8,
                   query_files: list[str] | None = None, seed: int = 0, device: str = "auto", cell: int = 96,
                   frames: int | None = None, tower: str = "vision", query_tower: str | None = None) -> dict:
    """A PNG grid of each query's nearest training images; queries are random val images or files.
    With `tower="audio"` clips are compared by their sound (and shown by their middle frame); with
    `query_tower="audio"` (and the vision tower) each query's sound finds the nearest frames."""
    model_spec = parse_model(model_spec)
    from .neighbours import draw_grid, neighbour_rows

    if out.suffix.lower() != ".png":
        raise UserError(f"--out '{out}' must end in .png")
    if not out.parent.exists():
        raise UserError(f"--out folder '{out.parent}' does not exist; create it first")
    choice = _as_choice(data)
    dev = select_device(device)
    query_tower = query_tower or tower
    if query_files and "audio" in (tower, query_tower):
        raise UserError("--query takes image files, which have no sound; with an audio tower the queries are val clips: "
                        "drop --query")
    if query_tower not in ("vision", "audio") or (query_tower, tower) == ("vision", "audio"):
        raise UserError(f"--query-tower '{query_tower}' with --tower {tower} is not supported; use --query-tower audio "
                        f"(sound to frames) or the same tower for both")
    joint = None
    if query_tower != tower:  # sound to frames, in the space both towers embed into
        from .crossmodal import open_joint_model

        joint = open_joint_model(model_spec)
    model, info, ds = open_model_and_data(model_spec, choice, "visualize-neighbours", need_labels=False, frames=frames,
                                          tower=tower)
    hear_by = front_end_of(info)
    if query_files:  # read before the long feature pass, so a bad file is refused at once
        images, labels = [], []
        for name in query_files:
            path = Path(name)
            if not path.is_file():
                raise UserError(f"--query '{name}' is not a file; give an image path")
            image, reason = read_image(path, ds.image_size)
            if image is None:
                raise UserError(f"--query '{name}' cannot be read as an image ({reason})")
            images.append(image)
            parent = path.parent.name
            labels.append(ds.classes.index(parent) if ds.classes and parent in ds.classes else -1)
        q_images, q_labels = torch.stack(images), torch.tensor(labels)
        queried = Split(labels=q_labels, images=q_images, size=ds.image_size)
    else:
        pool = ds.val if ds.val is not None else ds.train
        pick = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[:queries]
        queried = pool.subset(pick)  # clips are judged on all their frames and shown by the middle one
        if joint is not None:
            queried = queried.with_sound(SoundPlan(joint.front_end.sample_rate, joint.front_end.seconds))
            if not len(queried):
                raise UserError(f"none of the {len(pick)} val clips queried has sound; give clips with a soundtrack")
        q_images = torch.stack(queried.stills(list(range(len(queried)))))
        q_labels = queried.labels
    announce(choice, model_spec)
    kept: list[torch.Tensor] = []
    if joint is not None:
        from .crossmodal import frame_embedding, sound_embedding

        joint.to(dev)
        train_f, _ = extract_features(frame_embedding(joint), ds.train, dev, kept=kept)
        q_f, _ = extract_features(sound_embedding(joint), queried, dev, front_end=joint.front_end)
    else:
        train_f, _ = extract_features(model, ds.train, dev, kept=kept, front_end=hear_by)
        q_f, _ = extract_features(model, queried, dev, front_end=hear_by)
    train = ds.train if len(train_f) == len(ds.train) else ds.train.subset(torch.cat(kept))
    rows = neighbour_rows(q_images, q_labels, q_f, train, train_f, ds.classes, k)
    grid = draw_grid(rows, cell=cell, header=["query"] + [f"#{i + 1}" for i in range(k)])
    if distributed.is_main():
        tmp = out.with_name(out.name + ".tmp.png")
        grid.save(tmp)
        os.replace(tmp, out)
    same = [tile.colour == (30, 160, 60) for row in rows for tile in row[1:]]
    return {"out": str(out), "queries": len(rows), "k": k, "model": str(model_spec), **data_fields(choice),
            "tower": tower, "query_tower": query_tower,
            "same_class_fraction": round(sum(same) / max(1, len(same)), 4), "size": list(grid.size)}
