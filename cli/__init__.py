"""The `capsnet` command: one entry point whose subcommands are the pipeline's CLIs."""
