"""nerfx.models."""

# Keys that model configs saved by older nerfx (config.json) hold for what is now a run setting:
# the ops' backend (nerfx.ops.use_backend, the command lines' --backend).
RUN_SETTING_KEYS = ("backend", "attn_backend")


def without_run_settings(config: dict) -> dict:
    """A copy of a saved model config without RUN_SETTING_KEYS, so that old run folders load."""
    return {key: value for key, value in config.items() if key not in RUN_SETTING_KEYS}
