"""The `rlrt` subcommands beyond Lightning's own: one module per command, parsing its arguments and
orchestrating runs of the method. `rlrt.cli` imports a module only when its command runs."""
