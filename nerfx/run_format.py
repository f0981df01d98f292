"""The layout of a run folder's config.json and checkpoint.pt, and the upgrade of folders that
earlier versions of nerfx wrote: the one place that knows their history.

Every config.json and checkpoint.pt carries `format_version`. Files without one are version 1.
`upgrade_config` and `upgrade_checkpoint` bring what was read to FORMAT_VERSION in memory (the
files on disk are rewritten only when a resumed run saves), so every loader sees one layout:

    config.json  {"format_version", "model": name, "data", "seed", "settings": {...}, and what
                  the model's trainer adds (image models: "classes", "image_shape"; radiance
                  fields: "scene", "pipeline", "camera", "turntable", ...)}
    checkpoint   {"format_version", "step", "seconds", "task": the trainer's state, "rng"}

Version 1, radiance fields: config.json held the command line ("args"), its merged settings
("recipe") and the pipeline's arguments under "model"; the oldest checkpoints kept the trainer's
entries at the top level with "elapsed" seconds, had no EMA or per-step sample counts, one
optimiser group, and an occupancy grid of raw densities. Version 1, every model: saved model
settings could hold the ops' backend, now a setting of each command.
"""

from __future__ import annotations

import torch

FORMAT_VERSION = 2

# Keys that saved model settings held for what is now a setting of the command (--backend).
_BACKEND_KEYS = ("backend", "attn_backend")
_RADIANCE_MODELS = ("ngp", "nerf")
_NGP_EMA_DECAY = 0.95  # InstantNGPPipeline.ema_decay when version 1 runs had no EMA yet


class FormatError(ValueError):
    """A file of a format this nerfx cannot read."""


def _version(value: dict, what: str) -> int:
    version = int(value.get("format_version", 1))
    if version > FORMAT_VERSION:
        raise FormatError(f"{what} has format_version {version}; this nerfx reads up to "
                          f"{FORMAT_VERSION} (a newer nerfx wrote it)")
    return version


def _without_backend(value):
    """value with every backend key removed from its dicts, at any depth."""
    if isinstance(value, dict):
        return {k: _without_backend(v) for k, v in value.items() if k not in _BACKEND_KEYS}
    return value


def upgrade_config(config: dict) -> dict:
    """config.json's contents at FORMAT_VERSION."""
    if _version(config, "config.json") == FORMAT_VERSION:
        return config
    if isinstance(config.get("model"), dict):   # a version 1 radiance field
        return _radiance_config_v1(config)
    return {**_without_backend(config), "format_version": FORMAT_VERSION}


def _radiance_config_v1(config: dict) -> dict:
    for key in ("args", "recipe", "camera", "turntable", "scene"):
        if key not in config:
            raise FormatError(f"config.json: no {key!r} entry (not a run folder nerfx wrote?)")
    args, pipeline = config["args"], _without_backend(config["model"])
    if pipeline.get("name") == "ngp":
        pipeline.setdefault("loss", "l2")   # the loss became a setting; before, it was L2
    device = "gpu" if str(args.get("device", "cpu")).startswith("cuda") else "cpu"
    settings = {**_without_backend(config["recipe"]), "test_every": args.get("test_every", 8),
                "save_every": 250, "preset": device + ("-fast" if args.get("fast") else "")}
    return {"format_version": FORMAT_VERSION, "model": pipeline["name"],
            "data": args.get("data") or args.get("scene", "lego"), "seed": args.get("seed", 0),
            "settings": settings, "scene": config["scene"],
            "load_downscale": config.get("load_downscale", 1),
            "builtin_scene": config.get("builtin_scene", False), "pipeline": pipeline,
            "camera": config["camera"], "turntable": config["turntable"]}


def upgrade_checkpoint(payload: dict, config: dict) -> dict:
    """A checkpoint's contents at FORMAT_VERSION; config: its run's (upgraded) config."""
    if _version(payload, "checkpoint") == FORMAT_VERSION:
        return payload
    if "task" not in payload:   # the trainer's entries at the top level
        task = {k: v for k, v in payload.items() if k not in ("step", "elapsed")}
        payload = {"step": payload["step"], "seconds": payload["elapsed"], "task": task,
                   "rng": torch.get_rng_state()}
    task = dict(payload["task"])
    if config.get("model") in _RADIANCE_MODELS:
        task = _radiance_task_v1(task, config["model"])
    for value in task.values():   # EMA states written before debiasing
        if isinstance(value, dict) and {"decay", "num_updates", "model"} <= value.keys():
            value.setdefault("debias", False)
    return {**payload, "task": task, "format_version": FORMAT_VERSION}


def _radiance_task_v1(task: dict, model: str) -> dict:
    task.setdefault("samples_per_ray", "{}")
    task.setdefault("marched_per_ray", "{}")
    task["pipeline"] = _grid_of_thickness(task["pipeline"])
    if model == "ngp":
        if not task.get("ema"):   # the average starts from the trained weights
            task["ema"] = {"decay": _NGP_EMA_DECAY, "warmup": False, "debias": True,
                           "num_updates": 0, "model": task["pipeline"]}
        else:
            task["ema"] = {**task["ema"], "model": _grid_of_thickness(task["ema"]["model"])}
        task["optimizer"] = _ngp_param_groups(task["optimizer"], task["pipeline"])
    return task


def _grid_of_thickness(state: dict) -> dict:
    """The occupancy grid held raw densities sigma (1 / world unit): sigma is the optical
    thickness of a step of one world unit. The pipeline rescales it to its own step on load."""
    if "grid.density" not in state or "grid.optical_thickness" in state:
        return state
    state = dict(state)
    state["grid.optical_thickness"] = state.pop("grid.density").float()
    state["grid.step_size"] = torch.ones(())
    return state


def _ngp_param_groups(optimizer: dict, pipeline: dict) -> dict:
    """Version 1 trained Instant-NGP with one group of every parameter, in the order of the
    pipeline's parameters; now: the hash table, the MLP matrices, the MLP biases. Each
    parameter keeps its own moments."""
    saved = optimizer["param_groups"]
    if len(saved) != 1:
        return optimizer
    # The pipeline's parameters, in order: its state's tensors that are not buffers (the
    # field's box and the occupancy grid).
    names = [k for k in pipeline if k != "field.aabb" and not k.startswith("grid.")]
    if len(saved[0]["params"]) != len(names):
        raise FormatError(f"checkpoint: the optimiser holds {len(saved[0]['params'])} "
                          f"parameters, the pipeline {len(names)}")
    index = dict(zip(names, saved[0]["params"], strict=True))
    table = [n for n in names if n.startswith("field.encoding")]
    rest = [n for n in names if not n.startswith("field.encoding")]
    groups = [(table, 0.0, True), ([n for n in rest if pipeline[n].dim() >= 2], 1e-6, False),
              ([n for n in rest if pipeline[n].dim() < 2], 0.0, False)]
    settings = {k: v for k, v in saved[0].items() if k != "params"}
    return {"state": optimizer["state"],
            "param_groups": [{**settings, "weight_decay": decay, "skip_zero": skip,
                              "params": [index[n] for n in group]}
                             for group, decay, skip in groups]}
