"""Run folders, for every model: config.json, checkpoint.pt, metrics.json, written atomically and
read back at the current format (nerfx.run_format upgrades what earlier versions wrote).

A checkpoint holds tensors and plain values only, so it loads with weights_only=True. Checkpoints
and the JSON files are written to a temporary file and renamed over the last one, so a run killed
at any moment leaves loadable files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from nerfx.run_format import FORMAT_VERSION, FormatError, upgrade_checkpoint, upgrade_config

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.json"
METRICS = "metrics.json"


def data_name(data: str) -> str:
    """The short name of what a run trains on, for its folder, metrics.json and final line: the
    kind before a colon (shapes, mnist:PATH -> mnist), a scene by name as it is (lego, room), a
    folder by its own name (resolved, so "." and "fox/" name the folder; a file such as
    transforms.json by the folder holding it; a COLMAP model's sparse/0 by the capture above)."""
    if ":" in data and not Path(data).exists():
        return data.split(":")[0]
    path = Path(data)
    if not path.exists() and len(path.parts) <= 1:
        return data
    path = path.resolve()
    if path.is_file():
        path = path.parent
    if path.parent.name == "sparse":  # <capture>/sparse/0
        path = path.parent.parent
    return path.name or data


class RunError(ValueError):
    """A run folder that cannot be used; the message names the file and the problem."""


def save_checkpoint(path: Path, payload: dict) -> None:
    """Writes atomically: a killed run leaves the previous checkpoint intact."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def write_json(path: Path, value: dict) -> None:
    """Writes atomically, as save_checkpoint does: the old file or the new one, never half."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=1))
    os.replace(tmp, path)


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict:
    """Any checkpoint file nerfx wrote, as it is on disk."""
    if not path.is_file():
        raise RunError(f"{path}: no checkpoint (the run saved none yet?)")
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # torch raises many kinds for truncated or foreign files
        raise RunError(f"{path}: unreadable checkpoint ({exc})") from None


def read_run_config(run: Path, models: tuple[str, ...] | None = None) -> dict:
    """A run folder's config.json at the current format; with models, refused unless the run
    trained one of them. RunError names the file when it is missing or malformed."""
    path = run / CONFIG
    if not path.is_file():
        raise RunError(f"{run}: not a nerfx run folder ({CONFIG} missing)")
    try:
        config = upgrade_config(json.loads(path.read_text()))
    except json.JSONDecodeError as exc:
        raise RunError(f"{path}: malformed JSON ({exc})") from None
    except FormatError as exc:
        raise RunError(f"{path}: {exc}") from None
    if models is not None and config.get("model") not in models:
        raise RunError(f"{run} is a {config.get('model')!r} run; this takes runs of "
                       f"{', '.join(models)}")
    return config


def read_run_checkpoint(run: Path, config: dict, device: torch.device | str = "cpu") -> dict:
    """The run's checkpoint.pt at the current format: {"format_version", "step", "seconds",
    "task", "rng"}; config: the run's, from read_run_config."""
    payload = load_checkpoint(run / CHECKPOINT, device)
    try:
        return upgrade_checkpoint(payload, config)
    except (FormatError, KeyError) as exc:
        raise RunError(f"{run / CHECKPOINT}: {exc}") from None


def checkpoint_payload(step: int, seconds: float, task_state: dict) -> dict:
    """What save_checkpoint writes for a training run (torch's RNG state included)."""
    return {"format_version": FORMAT_VERSION, "step": step, "seconds": seconds,
            "task": task_state, "rng": torch.get_rng_state()}
