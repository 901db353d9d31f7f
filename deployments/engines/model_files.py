"""Where a FLUX checkpoint's files are: a local folder, or the Hugging Face cache in offline mode; and whether a
folder holds a complete pipeline. It imports no diffusers: `preload.py` uses it to start reading an fp8 engine's
weights before diffusers is imported."""

import json
from pathlib import Path

from deployments.config import FluxConfig
from deployments.engines.common import ModelFilesMissingError


def local_model_folder(config: FluxConfig) -> Path | None:
    """The folder to load from, checked for completeness; None when the hub may fill in what is missing."""
    folder = Path(config.model).expanduser()
    if not folder.is_dir():
        if not config.offline:
            return None
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        try:
            folder = Path(snapshot_download(config.model, cache_dir=config.cache_dir, local_files_only=True))
        except LocalEntryNotFoundError:
            raise ModelFilesMissingError(
                f"offline mode: '{config.model}' is neither a local folder nor in the Hugging Face cache "
                f"({config.cache_dir or 'the default cache'}). Download it once (`hf download {config.model}`"
                " with the same cache dir) or point `flux.model` at a local folder."
            ) from None
    missing = missing_model_files(folder)
    if missing:
        raise ModelFilesMissingError(
            f"{folder} is not a complete FLUX pipeline (safetensors weights only); missing: {', '.join(missing)}"
        )
    return folder


def missing_model_files(folder: Path) -> list[str]:
    """Files a diffusers pipeline folder lacks: configs, tokenizers, and safetensors weights per component."""
    index = folder / "model_index.json"
    if not index.is_file():
        return ["model_index.json"]
    missing = []
    for name, spec in json.loads(index.read_text()).items():
        if name.startswith("_") or not isinstance(spec, list) or spec[0] is None:
            continue
        class_name = spec[1]
        if class_name.endswith("Scheduler"):
            required = ["scheduler_config.json"]
        elif "Tokenizer" in class_name:
            required = ["tokenizer_config.json"]
        else:
            required = ["config.json", "*.safetensors"]
        for pattern in required:
            if not any((folder / name).glob(pattern)):
                missing.append(f"{name}/{pattern}")
        for shard_index in (folder / name).glob("*.safetensors.index.json"):
            missing += [
                f"{name}/{shard}" for shard in index_shards(shard_index) if not (folder / name / shard).is_file()
            ]
    return missing


def index_shards(index: Path) -> list[str]:
    """The weight files a `*.safetensors.index.json` of sharded weights names, sorted."""
    return sorted(set(json.loads(index.read_text())["weight_map"].values()))
