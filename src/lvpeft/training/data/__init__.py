"""LLaVA-format conversation data for training: `llava_format.load_llava_dataset` (the loader, its schema,
the training chat template) on `llava_rows.py` (reading and validating one row at a time), and
`validation.py` (validation questions and their model inputs)."""
