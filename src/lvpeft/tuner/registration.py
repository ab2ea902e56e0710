"""The `LVPRUNING` member of PEFT's `PeftType` enum, and the method's name and prefix.

PEFT keys its registries by `PeftType`, a closed string enum, and `register_peft_method` refuses
names that are not members of it. We add an `LVPRUNING` member at import time (a real member, so
`PeftType("LVPRUNING")`, `PeftType.LVPRUNING.value` and transformers' `load_adapter` work);
`lvpeft.tuner.model` then registers the config and tuner classes under it, so `import lvpeft` is all a
fresh process needs before `PeftModel.from_pretrained(...)` of an LVPruning adapter.
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
