"""The default recipe against random pruning at the same positions and budget, on each shipped base,
after a short training run with the library's defaults (the learning rate aside).

The fast guard of docs/recipe.md's measurements (1,000 validation questions, 200 steps, three seeds).
On the question-first base the default beats random by 20+ points: a change that makes the modules
rank what the model needs last fails here. On the image-first base NO recipe tried beats random yet
(issue 14, docs/recipe.md): that case is a strict expected failure, so the day a change makes it
pass, the test says so and the marker must go.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from lvpeft.demo.evaluation import evaluate, scorer_variants
from lvpeft.demo.questions import make_split
from lvpeft.demo.settings import DEFAULT_SETTINGS
from lvpeft.demo.tiny_model import SHIPPED_BASES, load_base
from lvpeft.demo.training import prepare_data, train_adapter

STEPS = {"question-first": 40, "image-first": 60}
QUESTIONS = 200


@pytest.mark.parametrize(
    "base_name",
    [
        pytest.param(
            "image-first",
            marks=pytest.mark.xfail(
                strict=True, reason="issue 14: no recipe beats random pruning on the image-first base yet"
            ),
        ),
        "question-first",
    ],
)
def test_default_recipe_beats_random_pruning(base_name: str, tmp_path: Path) -> None:
    if not (SHIPPED_BASES[base_name] / "config.json").is_file():
        pytest.skip(f"the {base_name} base is not shipped in this checkout")
    torch.set_num_threads(1)
    settings = replace(DEFAULT_SETTINGS, train_steps=STEPS[base_name], test_examples=1, seed=0)
    base, processor = load_base(base_name)
    data = prepare_data(tmp_path, settings, processor)
    model, trainer = train_adapter(base, processor, data.train, settings, tmp_path / "adapter")
    assert trainer.lvpruning_config.recipe == "lvpeft" and trainer.lvpruning_config.keep == 0.1
    questions = make_split("validation", QUESTIONS, seed=0)
    learned = evaluate(model, processor, questions).accuracy
    with scorer_variants(model)["random"]():
        random = evaluate(model, processor, questions).accuracy
    # measured margins are 20+ points (docs/recipe.md); 10 leaves room for seed noise on 200 questions
    assert learned >= random + 0.10, (base_name, learned, random)
