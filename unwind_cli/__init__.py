"""The `unwind` command line (docs/cli.md)."""
