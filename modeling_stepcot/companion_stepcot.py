"""The files of a Step-CoT checkpoint folder that `save_pretrained` does not write (processor, tokenizer, model card),
and their copy into a re-saved folder.

This file ships inside every checkpoint (remote code) next to `modeling_stepcot.py`: it imports only the standard
library (and huggingface_hub's cache lookup, which transformers brings).
"""

import shutil
from pathlib import Path

# Files of a saved folder that `save_pretrained` does not write but a user's re-save needs to keep: the processor
# (image processor, tokenizer) and the model card.
COMPANION_FILES = (
    "README.md",
    "processor_config.json",
    "preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "chat_template.jinja",
)


def copy_companion_files(source, folder: Path):
    """Copy COMPANION_FILES from `source` (a local folder, or a Hub repo id resolved in the local cache) into
    `folder`, leaving the files `folder` already has."""
    if not source:
        return
    source_folder = Path(source)
    if source_folder.resolve() == folder.resolve():
        return
    for name in COMPANION_FILES:
        if (folder / name).exists():
            continue
        if source_folder.is_dir():
            found = source_folder / name
            found = found if found.is_file() else None
        else:
            try:
                from huggingface_hub import try_to_load_from_cache

                cached = try_to_load_from_cache(str(source), name)
            except Exception:  # not a repo id: nothing to copy
                cached = None
            found = Path(cached) if isinstance(cached, str) else None
        if found is not None:
            shutil.copyfile(found, folder / name)


__all__ = ["COMPANION_FILES", "copy_companion_files"]
