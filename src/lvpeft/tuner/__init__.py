"""The LVPruning PEFT method, laid out like a `peft.tuners.<method>` folder: `config.py` (the adapter
config), `layer.py` (the decision module, the method's math), `model.py` (the tuner that injects it and
`get_lvpruning_model`), `registration.py` (the `LVPRUNING` PEFT type), `loading.py` (`from_pretrained`),
`card.py` and `flops.py` (the model card and the analytic FLOPs it reports), `devices.py` (where a
module runs on a dispatched base)."""
