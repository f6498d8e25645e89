"""Ray Data jobs and the command line of corpusflow."""
