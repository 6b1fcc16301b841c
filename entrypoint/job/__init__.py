"""The training job: the recipe (recipe.py) and one module per stage."""
