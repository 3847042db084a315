"""Model loading, architectures, checkpoints and the bundled zoo."""
