"""Small models that ship with CAM Explorer, trained by scripts in ``scripts/``."""
