"""lvpeft: LVPruning, learned language-guided vision-token pruning for LLaVA models, as a PEFT adapter.

```python
from lvpeft import LVPruningConfig, get_lvpruning_model
model = get_lvpruning_model(llava_model, LVPruningConfig(keep=0.1))  # a peft.PeftModel
```

`lvpeft.evaluate(adapter_or_base, "val.json", image_folder=...)` compares the unpruned model, the adapter
and the training-free scorers at several keep ratios (an `EvalReport`; `lvpeft eval` on the command line).

The package is laid out by concept: `pruning/` (scorers and the machinery that removes tokens),
`tuner/` (the PEFT method), `training/`, `measure/` and `demo/` on top, and a thin `cli.py`.

Importing this package registers the `LVPRUNING` PEFT method, so `peft.PeftModel.from_pretrained`
and transformers' `model.load_adapter` can load LVPruning adapters.
"""

from .measure.eval_report import EvalReport, EvalRow
from .measure.evaluate import evaluate
from .pruning.plan import PruneMode, PruningStats
from .tuner.config import LVPruningConfig
from .tuner.layer import DecisionModule
from .tuner.loading import from_pretrained
from .tuner.model import (  # importing it registers the method
    LVPruningModel,
    get_lvpruning_model,
    lvpruning_tuner,
)
from .tuner.registration import PEFT_TYPE

__version__ = "0.1.0"

__all__ = [
    "PEFT_TYPE",
    "DecisionModule",
    "EvalReport",
    "EvalRow",
    "LVPruningConfig",
    "LVPruningModel",
    "PruneMode",
    "PruningStats",
    "evaluate",
    "from_pretrained",
    "get_lvpruning_model",
    "lvpruning_tuner",
]
