"""Pure rendering functions: arrays in, images and matplotlib figures out (object API only)."""
