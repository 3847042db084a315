"""netlens-captum tests (a package, so its conftest does not shadow netlens' own)."""
