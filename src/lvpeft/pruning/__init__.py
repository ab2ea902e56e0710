"""The machinery that removes or masks vision tokens, knowing nothing of PEFT: `scorers/` decide
(one scorer per file), `decisions.py` turns scores into top-k or Gumbel decisions, `hooks.py` applies
them on a LLaVA model (with `plan.py`, `state.py`, `masks.py` and the slot arithmetic of `tokens.py`),
and `architecture.py` / `placement.py` describe the model family and where the modules sit."""
