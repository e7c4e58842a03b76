"""What runs the method reliably: the LightningCLI, checkpoints that never look valid half-written,
exact resume, run folders, one-line errors, atomic files, fingerprints, loggers."""
