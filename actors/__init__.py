"""Stage classes of corpusflow, usable by Ray Data ``map_batches`` and by Ray Serve alike."""
