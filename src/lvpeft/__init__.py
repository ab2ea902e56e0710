"""lvpeft: LVPruning, learned language-guided vision-token pruning for LLaVA models, as a PEFT adapter.

```python
from lvpeft import LVPruningConfig, get_lvpruning_model
model = get_lvpruning_model(llava_model, LVPruningConfig(keep=0.1))  # a peft.PeftModel
```

Importing this package registers the `LVPRUNING` PEFT method, so `peft.PeftModel.from_pretrained`
and transformers' `model.load_adapter` can load LVPruning adapters.
"""

from .config import LVPruningConfig
from .layer import DecisionModule
from .loading import from_pretrained
from .model import LVPruningModel, get_lvpruning_model, lvpruning_tuner  # importing it registers the method
from .pruning import PruneMode, PruningStats
from .registration import PEFT_TYPE

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
