"""Configuration: every setting (settings.py) and the platform the job runs on (platform.py)."""
