"""Training configs: each file's ``get_config()`` returns an `ml_collections.ConfigDict`.

Run one with ``python -m experiments.train --workdir DIR --config experiments/configs/NAME.py``;
each file's docstring gives its exact command and the result it reaches.
"""
