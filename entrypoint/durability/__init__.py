"""Checkpoints that survive the machine: manifests (pure decisions), upload and verified restore,
attempts and fencing, the background sync and its upload process, stop requests and accounting."""
