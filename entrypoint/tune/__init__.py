"""`finetune tune`: the search as pure decisions (space.py) and the Optuna run (search.py)."""
