"""lvpeft: LVPruning, learned language-guided vision-token pruning for LLaVA models, as a PEFT adapter.

```python
from lvpeft import LVPruningConfig, get_lvpruning_model
model = get_lvpruning_model(llava_model, LVPruningConfig(keep=0.1))  # a peft.PeftModel
```

Importing this package registers the `LVPRUNING` PEFT method, so `peft.PeftModel.from_pretrained`
and transformers' `model.load_adapter` can load LVPruning adapters.
"""

from .registration import PEFT_TYPE, register

register()

from .config import LVPruningConfig  # noqa: E402
from .layer import DecisionModule  # noqa: E402
from .loading import from_pretrained  # noqa: E402
from .model import LVPruningModel, get_lvpruning_model, lvpruning_tuner  # noqa: E402
from .pruning import PruneMode, PruningStats  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "PEFT_TYPE",
    "DecisionModule",
    "LVPruningConfig",
    "LVPruningModel",
    "PruneMode",
    "PruningStats",
    "from_pretrained",
    "get_lvpruning_model",
    "lvpruning_tuner",
]
