"""The machinery that removes or masks vision tokens, knowing nothing of PEFT: `scorers/` decide
(one scorer per file), `decisions.py` turns scores into top-k or Gumbel decisions, `hooks.py` applies
them on a LLaVA model (with `plan.py`, `state.py`, `masks.py` and the slot arithmetic of `tokens.py`),
`families.py` describes each supported (or refused) model family, `architecture.py` finds a model's
parts through it and `placement.py` where the modules sit."""
