"""Training recipes, one module per stage of DESIGN.md §4; each has a `*Config` and `train(config)`.

`spokenlm train STAGE --config FILE` runs one here; with `--workers N` it runs the same function
in N Ray Train workers (pipelines/ray_train.py).
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

# stage -> (module, config class name); each module defines train(config) -> dict
RECIPES: dict[str, tuple[str, str]] = {
    "text-lm": ("spokenlm.recipes.text_lm", "TextLMConfig"),
    "encoder-ssl": ("spokenlm.recipes.encoder_ssl", "EncoderSSLConfig"),
    "sylber": ("spokenlm.recipes.sylber", "SylberTrainConfig"),
    "ctc": ("spokenlm.recipes.ctc", "CTCTrainConfig"),
    "ctc-lm": ("spokenlm.recipes.ctc_lm", "CTCLMConfig"),
    "transcriber": ("spokenlm.recipes.transcriber", "TranscriberRecipeConfig"),
    "whisper-tune": ("spokenlm.recipes.whisper_tune", "WhisperTuneConfig"),
    "speechlm": ("spokenlm.recipes.speechlm", "SpeechLMTrainConfig"),
    "heads": ("spokenlm.recipes.heads", "HeadsRecipeConfig"),
    "translator": ("spokenlm.recipes.translator", "TranslatorRecipeConfig"),
}


def get_recipe(stage: str) -> tuple[type, Callable[[Any], dict]]:
    if stage not in RECIPES:
        raise ValueError(f"unknown training stage {stage!r}; expected one of {', '.join(RECIPES)}")
    module_name, config_name = RECIPES[stage]
    module = importlib.import_module(module_name)
    return getattr(module, config_name), module.train
