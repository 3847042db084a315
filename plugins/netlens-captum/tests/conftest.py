"""netlens-captum's tests use netlens' pytest helper (tiny model, sample images, plugin host)."""

pytest_plugins = ["netlens.testing"]
