"""Several processes: the torchrun launcher (launch.py) and the collectives that keep them in step."""
