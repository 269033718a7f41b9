"""The command line: one parser per command, defaults read from Settings."""
