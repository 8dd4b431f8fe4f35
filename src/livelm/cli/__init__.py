"""The `livelm` command line."""
