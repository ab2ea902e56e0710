"""Register LVPruning as a PEFT method.

PEFT keys its registries by `PeftType`, a closed string enum, and `register_peft_method` refuses
names that are not members of it. We add an `LVPRUNING` member at import time (a real member, so
`PeftType("LVPRUNING")`, `PeftType.LVPRUNING.value` and transformers' `load_adapter` work) and then
register the config and tuner classes. `import lvpeft` runs this once, so a fresh process can
`PeftModel.from_pretrained(...)` an LVPruning adapter.
"""

from __future__ import annotations

from peft.utils.peft_types import PeftType

METHOD_NAME = "lvpruning"
PREFIX = "lvpruning_"


def _extend_peft_type(name: str) -> PeftType:
    """Return the `PeftType` member `name`, adding it to the enum first if it is missing."""
    if name in PeftType._member_map_:
        return PeftType[name]
    member = str.__new__(PeftType, name)
    member._name_ = name
    member._value_ = name
    member.__objclass__ = PeftType
    if hasattr(PeftType, "_sort_order_"):
        member._sort_order_ = len(PeftType._member_names_)
    PeftType._member_map_[name] = member
    PeftType._value2member_map_[name] = member
    PeftType._member_names_.append(name)
    type.__setattr__(PeftType, name, member)
    return member


PEFT_TYPE: PeftType = _extend_peft_type(METHOD_NAME.upper())


def register() -> None:
    """Register `LVPruningConfig` and `LVPruningModel` with PEFT's mappings (idempotent)."""
    from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING
    from peft.utils import register_peft_method

    from .config import LVPruningConfig
    from .model import LVPruningModel

    if PEFT_TYPE in PEFT_TYPE_TO_TUNER_MAPPING:
        return
    register_peft_method(
        name=METHOD_NAME, config_cls=LVPruningConfig, model_cls=LVPruningModel, prefix=PREFIX
    )
