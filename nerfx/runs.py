"""Run folders: config.json, atomic checkpoints, loading a trained pipeline back; and the
--backend option every command line shares.

A checkpoint holds tensors and plain values only, so it loads with weights_only=True. Checkpoints
and the JSON files are written to a temporary file and renamed over the last one, so a run killed
at any moment leaves loadable files.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from nerfx.models.pipelines import InstantNGPPipeline, NeRFPipeline, build_pipeline
from nerfx.ops._dispatch import backend_names

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.json"


class RunError(ValueError):
    """A run folder that cannot be used; the message names the file and the problem."""


def add_backend_option(parser: argparse.ArgumentParser) -> None:
    """--backend, which every command line applies with nerfx.ops.use_backend(args.backend)."""
    parser.add_argument("--backend", choices=backend_names(),
                        help="backend of every op that has it, for this command: a run setting, "
                             "not the model's (default: $NERFX_BACKEND, else auto)")


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
    if not path.is_file():
        raise RunError(f"{path}: no checkpoint (the run saved none yet?)")
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # torch raises many kinds for truncated or foreign files
        raise RunError(f"{path}: unreadable checkpoint ({exc})") from None


def read_run_json(run: Path) -> dict:
    """A run folder's config.json, any model; RunError naming the file when it is missing or
    malformed."""
    path = run / CONFIG
    if not path.is_file():
        raise RunError(f"{run}: not a nerfx run folder ({CONFIG} missing)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RunError(f"{path}: malformed JSON ({exc})") from None


def read_config(run: Path) -> dict:
    """The config.json of a NeRF run, with the entries rendering needs."""
    path = run / CONFIG
    config = read_run_json(run)
    for key in ("model", "camera", "turntable"):
        if key not in config:
            raise RunError(f"{path}: no {key!r} entry (written by an older nerfx?)")
    return config


def load_pipeline(run: Path, device: torch.device | str = "cpu"
                  ) -> tuple[InstantNGPPipeline | NeRFPipeline, dict]:
    """-> (the trained pipeline in eval mode, the run's config dict)."""
    config = read_config(run)
    state = load_checkpoint(run / CHECKPOINT, device)
    pipeline = build_pipeline(config["model"]).to(device)
    # nerfx.loop's layout keeps the trainer's state under "task"; older runs at the top level.
    # Where training kept an EMA of the weights, that average is what renders.
    task = state.get("task", state)
    ema = task.get("ema")
    pipeline.load_state_dict(ema["model"] if ema else task["pipeline"])
    return pipeline.eval(), config
